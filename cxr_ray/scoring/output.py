"""A scoring job's output folder: tables as Parquet (and CSV), texts, summary.json, published whole."""

from __future__ import annotations

import io
from typing import Any, Sequence

import pyarrow as pa

from cxr_ray import storage
from cxr_ray.filenames import SUMMARY_FILE
from cxr_ray.storage import S3Settings

METRICS_NAME = "metrics"
PREDICTIONS_NAME = "predictions"


def table_to_csv(table: pa.Table) -> bytes:
    import pyarrow.csv as pcsv

    buffer = io.BytesIO()
    pcsv.write_csv(table, buffer)
    return buffer.getvalue()


def write_output_folder(
    dest: str,
    tables: dict[str, pa.Table],
    summary: dict[str, Any],
    s3: S3Settings | None,
    overwrite: bool,
    texts: dict[str, str] | None = None,
    csv: Sequence[str] = (),
    files: dict[str, bytes] | None = None,
) -> None:
    """Tables as NAME.parquet (and NAME.csv for those in `csv`), texts, other files (name -> bytes), summary.json, then
    `_SUCCESS`; staged, then published."""
    import pyarrow.parquet as pq

    with storage.staged_output(dest, s3, overwrite) as staging:
        fs, base = storage.resolve(staging, s3)
        fs.create_dir(base, recursive=True)
        for name, table in tables.items():
            buffer = io.BytesIO()
            pq.write_table(table, buffer)
            storage.write_bytes_atomic(storage.join(staging, f"{name}.parquet"), buffer.getvalue(), s3)
            if name in csv:
                storage.write_bytes_atomic(storage.join(staging, f"{name}.csv"), table_to_csv(table), s3)
        for name, text in (texts or {}).items():
            storage.write_bytes_atomic(storage.join(staging, name), text.encode(), s3)
        for name, blob in (files or {}).items():
            storage.write_bytes_atomic(storage.join(staging, name), blob, s3)
        storage.write_json_atomic(storage.join(staging, SUMMARY_FILE), summary, s3)
