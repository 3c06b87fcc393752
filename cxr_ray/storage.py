"""URIs -> pyarrow filesystems, with explicit S3 settings and atomic writes.

Every stage reads and writes through this module so that a study can live on
a local disk or in an S3 bucket without code changes. S3 endpoint, region and
credentials are always handed to pyarrow explicitly: pyarrow's own reading of
environment variables for custom endpoints is unreliable, and Ray workers on
other nodes do not share the driver's environment anyway.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import re
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any, Iterator, Mapping
from urllib.parse import urlparse

import pyarrow.fs as pafs

SUCCESS_MARKER = "_SUCCESS"


class StorageError(RuntimeError):
    """A storage location is missing, unreachable or refused us; the message says which."""


# The variables that hold S3 credentials: never copied into a Ray runtime_env.
CREDENTIAL_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")


@dataclass(frozen=True)
class S3Settings:
    """How to reach S3. ``endpoint_url`` is for S3-compatible servers (MinIO, moto).

    The keys never leave a process in the clear: `repr` hides them, and
    `to_dict` (what Ray tasks, actors and train workers receive) carries them
    only as a Ray object reference, so they appear in no train_loop_config,
    Tune config, runtime_env, log or result.
    """

    endpoint_url: str | None = None
    region: str | None = None
    access_key: str | None = None
    secret_key: str | None = None
    session_token: str | None = None

    def __repr__(self) -> str:
        # Also what str() and f-strings show: endpoint and region, never a key.
        keys = "set" if self.has_keys() else "none"
        return f"S3Settings(endpoint_url={self.endpoint_url!r}, region={self.region!r}, keys={keys})"

    def has_keys(self) -> bool:
        return bool(self.access_key or self.secret_key or self.session_token)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Pickled (a Ray task's arguments, a Tune callback in tuner.pkl) as `to_dict`: keys by
        # Ray object reference; outside Ray without keys (the reader uses its own environment).
        ray = sys.modules.get("ray")
        if self.has_keys() and ray is not None and ray.is_initialized():
            return S3Settings.from_dict, (self.to_dict(),)
        return S3Settings.from_dict, ({"endpoint_url": self.endpoint_url, "region": self.region},)

    def __copy__(self) -> "S3Settings":
        return self  # frozen: a copy is the same settings (and must not go through __reduce__)

    def __deepcopy__(self, memo: dict[int, Any]) -> "S3Settings":
        return self

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "S3Settings":
        """Read the standard AWS variables (plus ``CXR_RAY_S3_ENDPOINT``)."""
        env = os.environ if environ is None else environ
        return cls(
            endpoint_url=env.get("CXR_RAY_S3_ENDPOINT")
            or env.get("AWS_ENDPOINT_URL_S3")
            or env.get("AWS_ENDPOINT_URL")
            or None,
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
            access_key=env.get("AWS_ACCESS_KEY_ID") or None,
            secret_key=env.get("AWS_SECRET_ACCESS_KEY") or None,
            session_token=env.get("AWS_SESSION_TOKEN") or None,
        )

    def to_dict(self) -> dict[str, Any]:
        """The form Ray tasks, actors and train workers receive (`from_dict` rebuilds it there).

        Endpoint and region travel in the clear; the keys, when there are any,
        only as a reference to a Ray object (the object store is neither a log
        nor a config). Needs a connected Ray when there are keys.
        """
        return {"endpoint_url": self.endpoint_url, "region": self.region, "keys": _shared_keys(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "S3Settings":
        """Inverse of `to_dict`; None (no settings were sent) reads this process's environment.

        Settings sent without keys take this process's own (its environment,
        else pyarrow's default chain: an IAM role, a mounted Secret).
        """
        if not data:
            return cls.from_env()
        return _received(cls(endpoint_url=data.get("endpoint_url"), region=data.get("region")), data.get("keys"))

    def redacted(self) -> str:
        """A description safe for logs and reports: never prints the keys."""
        return f"endpoint={self.endpoint_url or 'AWS default'} region={self.region or 'unset'}"


_KEY_FIELDS = ("access_key", "secret_key", "session_token")


# settings -> (the Ray worker that put them, the reference): one object per settings and Ray session.
_SHARED: dict[S3Settings, tuple[str, Any]] = {}


def _shared_keys(settings: S3Settings) -> Any:
    """The keys as a Ray object reference (None without keys): what `to_dict` sends instead of the keys."""
    if not settings.has_keys():
        return None
    import ray

    if not ray.is_initialized():
        raise StorageError("S3 keys are handed to Ray tasks by object reference: connect to Ray first")
    worker = ray.get_runtime_context().get_worker_id()  # a new one after ray.shutdown() + init
    cached = _SHARED.get(settings)
    if cached is None or cached[0] != worker:
        cached = _SHARED[settings] = (worker, ray.put({name: getattr(settings, name) for name in _KEY_FIELDS}))
    return cached[1]


def _received(settings: S3Settings, ref: Any) -> S3Settings:
    """`settings` with the keys `_shared_keys` sent; without a reference (or a stale one), this process's own."""
    from dataclasses import replace

    if ref is not None and "ray" in sys.modules:
        ray = sys.modules["ray"]
        try:
            keys = ray.get(ref, timeout=60) if ray.is_initialized() else None
        except ray.exceptions.RayError:  # sent by a process that is gone (an old pickle)
            keys = None
        if keys is not None:
            settings = replace(settings, **{name: keys.get(name) for name in _KEY_FIELDS})
            # Sent on from here, they travel by the same reference (no new put while Ray pickles).
            _SHARED.setdefault(settings, (ray.get_runtime_context().get_worker_id(), ref))
            return settings
    env = S3Settings.from_env()
    return replace(settings, **{name: getattr(env, name) for name in _KEY_FIELDS})


@contextlib.contextmanager
def credentials_hidden_from_env() -> Iterator[None]:
    """Run a block with the AWS_* key variables out of this process's environment.

    Ray Tune copies AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and the session
    token from the driver's environment into every trial's runtime_env (the
    runtime_env agent logs it, the dashboard shows it, and the trial's Train
    controller and workers inherit it). Searches run `Tuner.fit` inside this
    block; the keys reach trials through `S3Settings.to_dict` instead.
    """
    saved = {name: os.environ.pop(name) for name in CREDENTIAL_ENV if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def make_s3_filesystem(settings: S3Settings) -> pafs.S3FileSystem:
    kwargs: dict[str, Any] = {
        "region": settings.region or "us-east-1",
        # Fail fast on a wrong endpoint instead of retrying for minutes.
        "connect_timeout": 5,
        "request_timeout": 30,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=3),
    }
    if settings.endpoint_url:
        parsed = urlparse(settings.endpoint_url if "://" in settings.endpoint_url else f"https://{settings.endpoint_url}")
        kwargs["endpoint_override"] = parsed.netloc
        kwargs["scheme"] = parsed.scheme or "https"
    if settings.access_key and settings.secret_key:
        kwargs["access_key"] = settings.access_key
        kwargs["secret_key"] = settings.secret_key
        if settings.session_token:
            kwargs["session_token"] = settings.session_token
    return _S3FileSystem(settings, **kwargs)


class _S3FileSystem(pafs.S3FileSystem):
    """pyarrow's S3 filesystem, pickled without its keys.

    Ray pickles a RunConfig's storage_filesystem into each trainer's and
    trial's arguments, and Ray Tune into tuner.pkl and its experiment state on
    the study's storage; pyarrow's own pickle holds the keys in the clear.
    This one pickles as `S3Settings.to_dict()` (keys by Ray object reference;
    outside Ray, none: the reader uses its own).
    """

    def __init__(self, settings: S3Settings, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._settings = settings
        if settings.has_keys() and "ray" in sys.modules and sys.modules["ray"].is_initialized():
            # Put the keys now: a put from inside __reduce__, while Ray pickles a task's
            # arguments, would disturb that pickle's own bookkeeping.
            _shared_keys(settings)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        ray = sys.modules.get("ray")
        if self._settings.has_keys() and ray is not None and ray.is_initialized():
            return _s3_filesystem_from_dict, (self._settings.to_dict(),)
        return _s3_filesystem_from_dict, ({"endpoint_url": self._settings.endpoint_url, "region": self._settings.region},)


def _s3_filesystem_from_dict(data: Mapping[str, Any]) -> pafs.S3FileSystem:
    return make_s3_filesystem(S3Settings.from_dict(data))


def resolve(uri: str | os.PathLike[str], s3: S3Settings | None = None) -> tuple[pafs.FileSystem, str]:
    """Turn a plain path, ``file://`` URI or ``s3://bucket/key`` into (filesystem, path)."""
    text = os.fspath(uri)
    if is_s3(text):
        path = text[len("s3://") :].strip("/")
        if not path:
            raise StorageError(f"{text!r}: an s3:// URI needs a bucket name")
        return make_s3_filesystem(s3 or S3Settings.from_env()), path
    if text.startswith("file://"):
        text = urlparse(text).path
    elif "://" in text:
        raise StorageError(f"{text!r}: unsupported URI scheme (use a path, file:// or s3://)")
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(text))


def absolute(uri: str) -> str:
    """s3:// URIs as they are; local paths and file:// URIs as absolute paths.

    Ray Train runs workers in their own working directory, so a relative path
    handed to a worker would land somewhere else.
    """
    return uri if is_s3(uri) else resolve(uri)[1]


def uri_for(like: str, fs_path: str) -> str:
    """A filesystem path that pyarrow returned for something under `like`, as a URI of the same kind.

    pyarrow's S3 paths are `bucket/key` with no scheme; local paths are already usable.
    """
    if is_s3(like) and not is_s3(fs_path):
        return f"s3://{fs_path.lstrip('/')}"
    return fs_path


def join(uri: str, *parts: str) -> str:
    """Join URI parts with '/' for s3:// and the OS separator for local paths."""
    if is_s3(uri):
        return posixpath.join(uri.rstrip("/"), *parts)
    return os.path.join(uri, *parts)


def describe_error(uri: str, exc: BaseException, s3: S3Settings | None = None) -> str:
    """One readable sentence for an OSError coming from pyarrow's S3 or local layers."""
    msg = str(exc)
    if is_s3(uri):
        where = (s3 or S3Settings.from_env()).redacted()
        low = msg.lower()
        if "access denied" in low or "access_denied" in low or "invalidaccesskeyid" in low or "signaturedoesnotmatch" in low or "forbidden" in low:
            return f"{uri}: S3 refused the credentials ({where}). Check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY."
        if "nosuchbucket" in low or "bucket does not exist" in low:
            return f"{uri}: the bucket does not exist ({where})."
        if "curl" in low or "connect" in low or "timeout" in low or "resolve" in low or "network" in low:
            return f"{uri}: cannot reach the S3 endpoint ({where}): {msg.splitlines()[0]}"
        return f"{uri}: S3 error ({where}): {msg.splitlines()[0]}"
    return f"{uri}: {msg.splitlines()[0] if msg else type(exc).__name__}"


def file_info(uri: str, s3: S3Settings | None = None) -> pafs.FileInfo:
    fs, path = resolve(uri, s3)
    try:
        return fs.get_file_info(path)
    except OSError as exc:
        raise StorageError(describe_error(uri, exc, s3)) from exc


def exists(uri: str, s3: S3Settings | None = None) -> bool:
    return file_info(uri, s3).type != pafs.FileType.NotFound


def is_dir(uri: str, s3: S3Settings | None = None) -> bool:
    return file_info(uri, s3).type == pafs.FileType.Directory


def list_files(uri: str, s3: S3Settings | None = None) -> list[pafs.FileInfo]:
    """All files (not folders) under ``uri``, recursively, sorted by path.

    A local folder is listed by `_walk_local`: each folder once however
    symlinks loop, and a link that leads nowhere is listed, so it is counted.
    """
    fs, path = resolve(uri, s3)
    try:
        if isinstance(fs, pafs.LocalFileSystem):
            infos = _walk_local(path)
        else:
            infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    except OSError as exc:
        raise StorageError(describe_error(uri, exc, s3)) from exc
    return sorted((i for i in infos if i.type == pafs.FileType.File), key=lambda i: i.path)


def _walk_local(root: str) -> list[pafs.FileInfo]:
    """Every file under a local folder, following symlinks, with each folder walked once.

    pyarrow's own listing follows a symlinked folder loop until the path is
    too long (listing every file again at each turn) and silently drops a
    link to itself or to nothing. Here a folder already walked (same device
    and inode) is skipped; folders reached through a link are walked after
    the real ones, so a file is listed under its own path; and a link that
    cannot be followed is listed without a size, so its reader reports why.
    """
    seen: set[tuple[int, int]] = set()
    real, linked, files = [root], [], []
    while real or linked:
        folder = real.pop() if real else linked.pop(0)
        info = os.stat(folder)
        if (info.st_dev, info.st_ino) in seen:
            continue
        seen.add((info.st_dev, info.st_ino))
        with os.scandir(folder) as scan:
            entries = sorted(scan, key=lambda e: e.name)
        for entry in entries:
            try:
                target = entry.stat()  # follows links
            except OSError:  # a loop of links, or a link to nothing
                files.append(pafs.FileInfo(entry.path, pafs.FileType.File))
                continue
            if entry.is_dir():
                (linked if entry.is_symlink() else real).append(entry.path)
            elif entry.is_file():
                files.append(pafs.FileInfo(entry.path, pafs.FileType.File, size=target.st_size))
    return files


def read_bytes(uri: str, s3: S3Settings | None = None) -> bytes:
    fs, path = resolve(uri, s3)
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except OSError as exc:
        raise StorageError(describe_error(uri, exc, s3)) from exc


def read_many(uris: list[str], s3: S3Settings | None = None, threads: int = 16) -> list[bytes | OSError]:
    """The bytes of each file (path or s3:// URI); an unreadable one gives its OSError instead of raising.

    For jobs that must not stop at one bad file (ingest, scan). S3 reads are
    latency-bound, so they overlap on threads; local reads run in order.
    """
    from concurrent.futures import ThreadPoolExecutor

    s3_fs = make_s3_filesystem(s3 or S3Settings.from_env()) if any(is_s3(u) for u in uris) else None

    def read(uri: str) -> bytes | OSError:
        try:
            if is_s3(uri):
                with s3_fs.open_input_stream(uri[len("s3://") :]) as f:
                    return f.read()
            with open(uri, "rb") as f:
                return f.read()
        except OSError as exc:
            return exc

    if s3_fs is None:
        return [read(u) for u in uris]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(read, uris))


def check_destination(dest: str, s3: S3Settings | None = None, overwrite: bool = False) -> None:
    """Refuse an existing output unless `overwrite`; on S3 the bucket must exist. Nothing is written."""
    # A half-published S3 output (only version folders no pointer names) is no output: the publish cleans it.
    if not overwrite and has_output(dest, s3):
        raise StorageError(f"{dest}: already exists; pass --overwrite to replace it")
    if is_s3(dest):
        bucket = dest[len("s3://") :].split("/")[0]
        if not exists(f"s3://{bucket}", s3):
            raise StorageError(f"s3://{bucket}: destination bucket does not exist ({(s3 or S3Settings.from_env()).redacted()})")


def _location(uri: str) -> tuple[str, tuple[str, ...]]:
    """(filesystem kind, path parts) with links resolved locally, for comparing two locations."""
    if is_s3(uri):
        return "s3", tuple(p for p in uri[len("s3://") :].split("/") if p)
    path = os.path.realpath(resolve(uri)[1])
    return "local", tuple(p for p in path.split(os.sep) if p)


def check_separate(dest: str, sources: list[str] | tuple[str, ...], what: str = "source") -> None:
    """Refuse an output folder that is, contains or lies inside one of the inputs, before anything is written.

    An overwrite of a folder that holds the input deletes the input; an output
    inside the input tree is read back as input by the next run.
    """
    kind, target = _location(dest)
    for src in sources:
        other_kind, other = _location(src)
        if kind != other_kind:
            continue
        shared = min(len(target), len(other))
        if target[:shared] == other[:shared]:
            relation = "is" if len(target) == len(other) else "is inside" if len(target) > len(other) else "contains"
            raise StorageError(f"{dest}: the output {relation} the {what} {src}; choose a folder outside it")


def write_bytes_atomic(uri: str, data: bytes, s3: S3Settings | None = None) -> None:
    """Write so that ``uri`` shows either its old content or all of the new.

    Locally: temp file in the same folder, fsync, rename. On S3 a single PUT
    only becomes visible once complete, so it is atomic already.
    """
    fs, path = resolve(uri, s3)
    try:
        if isinstance(fs, pafs.LocalFileSystem):
            folder = os.path.dirname(path)
            os.makedirs(folder, exist_ok=True)
            tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex[:8]}")
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        else:
            with fs.open_output_stream(path) as f:
                f.write(data)
    except OSError as exc:
        raise StorageError(describe_error(uri, exc, s3)) from exc


def write_json_atomic(uri: str, obj: Any, s3: S3Settings | None = None) -> None:
    write_bytes_atomic(uri, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode(), s3)


def read_json(uri: str, s3: S3Settings | None = None) -> Any:
    return json.loads(read_bytes(uri, s3).decode())


def delete_dir(uri: str, s3: S3Settings | None = None) -> None:
    fs, path = resolve(uri, s3)
    try:
        if fs.get_file_info(path).type != pafs.FileType.NotFound:
            fs.delete_dir(path)
    except OSError as exc:
        raise StorageError(describe_error(uri, exc, s3)) from exc


# Publishing. Locally an output folder is built in a hidden sibling and renamed
# into place. S3 has no rename: copying objects into DEST one by one shows a
# partial folder under its final name, and an overwrite had to delete the old
# output first. So on S3 an output is built in a version folder inside DEST
# (DEST/_v-<time>-<id>/) and published by one PUT of a small pointer object,
# DEST/_CURRENT, naming it: readers see the old version or the new one, never a
# mix, and the old version is deleted only after the switch. Every reader of an
# output folder therefore resolves it through `published()`.
POINTER_FILE = "_CURRENT"
VERSION_PREFIX = "_v-"
_VERSION_NAME = re.compile(r"_v-\d{8}T\d{6}-[0-9a-f]{8}")
# A version folder no pointer names may belong to a run still building it: a
# later publish removes it only once finished (_SUCCESS) or idle this long.
STALE_BUILD_S = 3600.0


def staging_uri(final_uri: str) -> str:
    """Where an output is built before it is published: a hidden sibling locally, a new version folder on S3."""
    if is_s3(final_uri):
        return join(final_uri.rstrip("/"), f"{VERSION_PREFIX}{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:8]}")
    path = os.path.abspath(final_uri)
    return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.staging-{uuid.uuid4().hex[:8]}")


def _current_version(uri: str, s3: S3Settings | None) -> str | None:
    """The version folder that `uri/_CURRENT` names, or None where there is no pointer."""
    pointer = join(uri, POINTER_FILE)
    fs, path = resolve(pointer, s3)
    try:
        with fs.open_input_stream(path) as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StorageError(describe_error(pointer, exc, s3)) from exc
    try:
        version = json.loads(raw.decode())["version"]
    except (ValueError, KeyError, TypeError):
        version = None
    # Never follow a pointer out of its folder: others may write to the storage.
    if not isinstance(version, str) or not _VERSION_NAME.fullmatch(version):
        raise StorageError(f"{pointer}: not a valid output pointer; replace the output with --overwrite")
    return version


def published(uri: str, s3: S3Settings | None = None) -> str:
    """The folder that holds what is published at output folder `uri`: every reader of an output resolves it here.

    Locally `uri` itself (publishing renames whole folders). On S3 the version
    folder that `uri/_CURRENT` names; a folder without a pointer (an output
    published before pointers existed, or any plain folder) is itself.
    """
    if not is_s3(uri):
        return uri
    version = _current_version(uri, s3)
    return join(uri.rstrip("/"), version) if version else uri


def is_complete(uri: str, s3: S3Settings | None = None) -> bool:
    """A published output folder carries a success marker, written last (on S3, in the version the pointer names)."""
    return exists(join(published(uri, s3), SUCCESS_MARKER), s3)


def _children(uri: str, s3: S3Settings | None) -> list[pafs.FileInfo]:
    fs, path = resolve(uri, s3)
    try:
        return fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    except OSError as exc:
        raise StorageError(describe_error(uri, exc, s3)) from exc


def has_output(dest: str, s3: S3Settings | None = None) -> bool:
    """Whether `dest` holds something a publish replaces only with --overwrite.

    Locally anything there. On S3 a pointer or anything but version folders no
    pointer names: those are leftovers of an interrupted publish (or a build
    in progress), never an output, and the next publish cleans them.
    """
    info = file_info(dest, s3)
    if info.type == pafs.FileType.NotFound:
        return False
    if not is_s3(dest) or info.type == pafs.FileType.File:
        return True
    if _current_version(dest, s3):
        return True
    return any(not _VERSION_NAME.fullmatch(posixpath.basename(i.path)) for i in _children(dest, s3))


def publish_dir(staging: str, final: str, s3: S3Settings | None = None, overwrite: bool = False) -> None:
    """Publish a finished staging folder (from `staging_uri`) at `final`, replacing an old output only if asked.

    Locally two renames swap whole folders. On S3 one PUT of the pointer
    switches readers from the old version to the new one; what the old one
    held is deleted only after that.
    """
    if is_s3(final):
        _publish_s3(staging, final, s3, overwrite)
        return
    fs, final_path = resolve(final)
    staging_path = resolve(staging)[1]
    try:
        present = fs.get_file_info(final_path).type != pafs.FileType.NotFound
        if present and not overwrite:
            raise StorageError(f"{final}: already exists; pass --overwrite to replace it")
        trash = f"{final_path}.old-{uuid.uuid4().hex[:8]}" if present else None
        if trash:
            os.rename(final_path, trash)
        os.makedirs(os.path.dirname(final_path), exist_ok=True)
        os.rename(staging_path, final_path)
        if trash:
            fs.delete_dir(trash)
    except OSError as exc:
        raise StorageError(describe_error(final, exc)) from exc


def _publish_s3(staging: str, final: str, s3: S3Settings | None, overwrite: bool) -> None:
    version = posixpath.basename(staging.rstrip("/"))
    if staging.rstrip("/") != join(final.rstrip("/"), version) or not _VERSION_NAME.fullmatch(version):
        raise StorageError(f"{staging}: not a version folder of {final} (build it at storage.staging_uri)")
    if not overwrite and has_output(final, s3):
        raise StorageError(f"{final}: already exists; pass --overwrite to replace it")
    if not exists(join(staging, SUCCESS_MARKER), s3):
        raise StorageError(f"{staging}: unfinished (no {SUCCESS_MARKER}), not published")
    # The switch: one small PUT, which S3 shows whole or not at all.
    write_json_atomic(join(final, POINTER_FILE), {"version": version}, s3)
    try:
        remove_unreachable(final, s3)
    except StorageError:
        pass  # published already; what is left over is unreachable, and the next publish removes it


def _finished_or_stale(version_uri: str, s3: S3Settings | None) -> bool:
    fs, path = resolve(version_uri, s3)
    infos = [i for i in fs.get_file_info(pafs.FileSelector(path, recursive=True)) if i.type == pafs.FileType.File]
    if any(posixpath.basename(i.path) == SUCCESS_MARKER for i in infos):
        return True
    newest = max((i.mtime_ns or 0 for i in infos), default=0)
    return time.time() - newest / 1e9 > STALE_BUILD_S


def remove_unreachable(final: str, s3: S3Settings | None = None) -> list[str]:
    """Delete what no reader of the S3 output `final` can reach: replaced versions, an output from before
    pointers, finished builds whose publish was cut, idle unfinished builds. Returns the names removed."""
    current = _current_version(final, s3)
    if current is None:
        return []
    fs = resolve(final, s3)[0]
    removed = []
    try:
        for info in _children(final, s3):
            name = posixpath.basename(info.path)
            if name in (current, POINTER_FILE):
                continue
            if _VERSION_NAME.fullmatch(name) and not _finished_or_stale(uri_for(final, info.path), s3):
                continue  # perhaps a concurrent run still building
            if info.type == pafs.FileType.Directory:
                fs.delete_dir(info.path)
            else:
                fs.delete_file(info.path)
            removed.append(name)
    except OSError as exc:
        raise StorageError(describe_error(final, exc, s3)) from exc
    return removed


def _discard_staging(staging: str, dest: str, s3: S3Settings | None) -> None:
    """Remove a failed build, unless the failure came after its pointer landed (a lost reply): then it is the output."""
    try:
        if is_s3(dest) and _current_version(dest, s3) == posixpath.basename(staging.rstrip("/")):
            return
        delete_dir(staging, s3)
    except StorageError:
        pass  # unreachable now; the next publish at `dest` removes it


@contextlib.contextmanager
def staged_output(dest: str, s3: S3Settings | None = None, overwrite: bool = False) -> Iterator[str]:
    """Build an output folder in a private staging folder; publish it whole, or not at all.

    Yields the staging URI. When the block finishes, `_SUCCESS` is written
    and the folder is published to `dest` (replacing it only with
    `overwrite`). On any error the build is discarded and whatever was at
    `dest` stays readable; on S3, a build an interrupted connection leaves
    behind is unreachable and removed by the next publish at `dest`.
    """
    staging = staging_uri(dest)
    try:
        yield staging
        write_bytes_atomic(join(staging, SUCCESS_MARKER), b"", s3)
        publish_dir(staging, dest, s3, overwrite=overwrite)
    except BaseException:
        _discard_staging(staging, dest, s3)
        raise
