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
import uuid
from dataclasses import asdict, dataclass
from typing import Any, Iterator, Mapping
from urllib.parse import urlparse

import pyarrow.fs as pafs

SUCCESS_MARKER = "_SUCCESS"


class StorageError(RuntimeError):
    """A storage location is missing, unreachable or refused us; the message says which."""


@dataclass(frozen=True)
class S3Settings:
    """How to reach S3. ``endpoint_url`` is for S3-compatible servers (MinIO, moto)."""

    endpoint_url: str | None = None
    region: str | None = None
    access_key: str | None = None
    secret_key: str | None = None
    session_token: str | None = None

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
        """The form Ray tasks, actors and train workers receive (`from_dict` rebuilds it there)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "S3Settings":
        """Inverse of `to_dict`; None (no settings were sent) reads this process's environment."""
        return cls(**data) if data else cls.from_env()

    def redacted(self) -> str:
        """A description safe for logs and reports: never prints the keys."""
        return f"endpoint={self.endpoint_url or 'AWS default'} region={self.region or 'unset'}"


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
    return pafs.S3FileSystem(**kwargs)


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
    """All files (not folders) under ``uri``, recursively, sorted by path."""
    fs, path = resolve(uri, s3)
    try:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    except OSError as exc:
        raise StorageError(describe_error(uri, exc, s3)) from exc
    return sorted((i for i in infos if i.type == pafs.FileType.File), key=lambda i: i.path)


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
    if exists(dest, s3) and not overwrite:
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


def staging_uri(final_uri: str) -> str:
    """A sibling location for building an output before it is published."""
    name = posixpath.basename(final_uri.rstrip("/")) if is_s3(final_uri) else os.path.basename(os.path.abspath(final_uri))
    parent = posixpath.dirname(final_uri.rstrip("/")) if is_s3(final_uri) else os.path.dirname(os.path.abspath(final_uri))
    return join(parent, f".{name}.staging-{uuid.uuid4().hex[:8]}")


def is_complete(uri: str, s3: S3Settings | None = None) -> bool:
    """A published output folder carries a success marker, written last."""
    return exists(join(uri, SUCCESS_MARKER), s3)


def publish_dir(staging: str, final: str, s3: S3Settings | None = None, overwrite: bool = False) -> None:
    """Move a finished staging folder to its final name, replacing the old one only if asked.

    Locally the swap is two renames, so readers see the old folder or the new
    one, never a mix. S3 has no rename: the old objects are deleted first and
    the new ones copied in, with the success marker copied last, so a reader
    that checks the marker never trusts a half-published folder.
    """
    fs, final_path = resolve(final, s3)
    _, staging_path = resolve(staging, s3)
    try:
        present = fs.get_file_info(final_path).type != pafs.FileType.NotFound
        if present and not overwrite:
            raise StorageError(f"{final}: already exists; pass --overwrite to replace it")
        if isinstance(fs, pafs.LocalFileSystem):
            trash = None
            if present:
                trash = f"{final_path}.old-{uuid.uuid4().hex[:8]}"
                os.rename(final_path, trash)
            os.makedirs(os.path.dirname(final_path), exist_ok=True)
            os.rename(staging_path, final_path)
            if trash:
                fs.delete_dir(trash)
            return
        if present:
            fs.delete_dir(final_path)
        infos = [i for i in fs.get_file_info(pafs.FileSelector(staging_path, recursive=True)) if i.type == pafs.FileType.File]
        # Marker last: until it lands the folder is not "complete".
        infos.sort(key=lambda i: (posixpath.basename(i.path) == SUCCESS_MARKER, i.path))
        for info in infos:
            rel = info.path[len(staging_path) :].lstrip("/")
            fs.copy_file(info.path, posixpath.join(final_path, rel))
        fs.delete_dir(staging_path)
    except OSError as exc:
        raise StorageError(describe_error(final, exc, s3)) from exc


@contextlib.contextmanager
def staged_output(dest: str, s3: S3Settings | None = None, overwrite: bool = False) -> Iterator[str]:
    """Build an output folder in a private staging folder; publish it whole, or not at all.

    Yields the staging URI. When the block finishes, `_SUCCESS` is written
    and the folder is published to `dest` (replacing it only with
    `overwrite`). On any error, the staging folder is removed, so nothing
    half-written is ever visible and whatever was at `dest` stays untouched.
    """
    staging = staging_uri(dest)
    try:
        yield staging
        write_bytes_atomic(join(staging, SUCCESS_MARKER), b"", s3)
        publish_dir(staging, dest, s3, overwrite=overwrite)
    except BaseException:
        try:
            delete_dir(staging, s3)
        except StorageError:
            pass
        raise
