"""Content identities: of a source tree, of an image table, and of a training run's inputs.

The study skips a stage, and a training re-uses its run folder, only when
what it reads is the same. These digests say what was read, never where it
lives: the same files under another path (a copy, Ray's uploaded working
dir) give the same digest; one changed byte gives another.

- source_fingerprint: sorted relative paths with sizes and content hashes
  (SHA-256 of each local file; on S3 the object's ETag from a listing, or
  its SHA-256 where the listing has none).
- table_identity: the rows of an image table (the hash of each image's
  source bytes or pixels, its label, split, source and size), sorted.
- claim_run_name: the run folder a training on given inputs owns, recorded
  in {run}/inputs.json before it trains.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

from cxr_ray import storage
from cxr_ray.config import ConfigError
from cxr_ray.data import schema
from cxr_ray.storage import S3Settings, StorageError

INPUTS_FILE = "inputs.json"  # {run}/inputs.json: the digest of what the run was trained on
INPUTS_SUFFIX = "-inputs-"  # name-inputs-<digest>: a run on other inputs than the one under `name`
# The image-table columns that define what a model sees or is scored on (never the original path).
TABLE_COLUMNS = ("sha256", "label", "split", "source", "height", "width")
# Config fields that locate a table: the table's content identity stands in for them.
LOCATION_FIELDS = ("data", "fakes")
_THREADS = 16
_CHUNK = 1 << 20


def digest(obj: Any) -> str:
    """A short hex digest of a JSON-able value (keys sorted, so dict order does not matter)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- source trees


def source_fingerprint(src_uri: str, s3: S3Settings | None = None) -> dict[str, Any]:
    """{digest, files, bytes} of every file ingest would read under `src_uri`.

    The file list is ingest's own scan, so the fingerprint covers exactly what
    ingest reads; IngestError (one line) when the source is missing.
    """
    from cxr_ray.data.ingest import scan_source

    s3 = s3 or S3Settings.from_env()
    files = scan_source(src_uri, s3)
    etags = _s3_etags(src_uri, s3) if storage.is_s3(src_uri) else {}

    def content(path: str) -> str:
        tag = etags.get(path)
        return f"etag:{tag}" if tag else _sha256_of(storage.uri_for(src_uri, path), s3)

    with ThreadPoolExecutor(max_workers=_THREADS) as pool:
        hashes = list(pool.map(content, [f.path for f in files]))
    entries = sorted((f.rel, f.size, h) for f, h in zip(files, hashes))
    return {"digest": digest(entries), "files": len(entries), "bytes": sum(f.size for f in files)}


def _sha256_of(uri: str, s3: S3Settings | None) -> str:
    """`sha256:<hex>` of a file's bytes, read in chunks; an unreadable file is marked so (ingest quarantines it)."""
    fs, path = storage.resolve(uri, s3)
    h = hashlib.sha256()
    try:
        with fs.open_input_stream(path) as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    except OSError as exc:
        return f"unreadable:{type(exc).__name__}"
    return f"sha256:{h.hexdigest()}"


def _s3_etags(src_uri: str, s3: S3Settings) -> dict[str, str]:
    """pyarrow path (bucket/key) -> ETag of every object under the prefix, from one paginated listing."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _, prefix = src_uri[len("s3://"):].partition("/")
    prefix = prefix.rstrip("/") + "/" if prefix.strip("/") else ""
    tags: dict[str, str] = {}
    try:
        for page in _boto3_client(s3).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                tags[f"{bucket}/{obj['Key']}"] = str(obj.get("ETag", "")).strip('"')
    except (BotoCoreError, ClientError) as exc:
        raise StorageError(f"{src_uri}: cannot list the source for its fingerprint ({type(exc).__name__}: {exc})") from None
    return tags


def _boto3_client(s3: S3Settings) -> Any:
    import boto3

    return boto3.client(
        "s3", endpoint_url=s3.endpoint_url, region_name=s3.region or "us-east-1",
        aws_access_key_id=s3.access_key, aws_secret_access_key=s3.secret_key, aws_session_token=s3.session_token,
    )


# ---------------------------------------------------------------- image tables


def table_identity(table_uri: str, s3: S3Settings | None = None) -> str:
    """The content identity of an image table: its rows' TABLE_COLUMNS, sorted, hashed.

    Reads only those columns (no pixels). The same images ingested from another
    path, or re-ingested unchanged, keep the identity.
    """
    import pyarrow.dataset as pads

    images = storage.join(storage.published(table_uri, s3), schema.IMAGES_DIR)  # on S3, the version the pointer names
    fs, path = storage.resolve(images, s3)
    try:
        table = pads.dataset(path, filesystem=fs, format="parquet").to_table(columns=list(TABLE_COLUMNS))
    except (OSError, ValueError) as exc:
        raise StorageError(f"{images}: cannot read the image table for its identity ({exc})") from None
    rows = sorted(zip(*(table.column(c).to_pylist() for c in TABLE_COLUMNS)))
    return digest([list(r) for r in rows])


# ---------------------------------------------------------------- training runs


def run_inputs(identity: dict[str, Any], tables: Sequence[str], s3: S3Settings | None = None) -> dict[str, Any]:
    """What a training learns from: its config identity (table paths left out) and each table's content identity."""
    config = {k: v for k, v in identity.items() if k not in LOCATION_FIELDS}
    return {"config": config, "tables": [table_identity(t, s3) for t in tables]}


def claim_run_name(
    runs_root: str, name: str, inputs: dict[str, Any], s3: S3Settings | None = None,
    log: Callable[[str], None] = print,
) -> str:
    """The run name whose folder holds (or will hold) a training on exactly `inputs`.

    `name` when its folder is new or recorded these inputs; otherwise (a run on
    other data or config, or one from before inputs were recorded)
    `name-inputs-<digest>`, so a finished or resumable run is never re-used for
    inputs it was not trained on. A new folder gets its inputs.json before the
    training starts, so an interrupted run resumes only on the same inputs.
    """
    want = digest(inputs)
    for candidate in (name, f"{name}{INPUTS_SUFFIX}{want[:8]}"):
        run_uri = storage.join(runs_root, candidate)
        record_uri = storage.join(run_uri, INPUTS_FILE)
        if storage.exists(record_uri, s3):
            if storage.read_json(record_uri, s3).get("digest") == want:
                return candidate
        elif _is_free(run_uri, s3):
            storage.write_json_atomic(record_uri, {"digest": want, **inputs}, s3)
            return candidate
        log(f"{run_uri}: trained on other inputs (data or config); not re-used")
    raise ConfigError(f"{run_uri}: already holds a run on other inputs; give the training another name")


def _is_free(run_uri: str, s3: S3Settings | None) -> bool:
    """No folder there, or an empty one."""
    return not storage.exists(run_uri, s3) or not storage.list_files(run_uri, s3)
