"""The Parquet schema every image table shares: ingested reals, generated fakes.

One schema means reals and fakes can be concatenated and fed to the same
loader; a detector sees no column that gives the answer away except `source`,
which loaders never pass to a model.
"""

from __future__ import annotations

import pyarrow as pa

IMAGE_SCHEMA = pa.schema(
    [
        pa.field("image", pa.binary(), nullable=False),  # raw uint8 pixels, row-major, height*width bytes
        pa.field("height", pa.int32(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("label", pa.int64(), nullable=False),  # 0 NORMAL, 1 PNEUMONIA
        pa.field("class_name", pa.string(), nullable=False),
        pa.field("patient_id", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),  # train / val / test
        pa.field("source", pa.string(), nullable=False),  # real / fake
        pa.field("sha256", pa.string(), nullable=False),  # of the original file bytes (reals) or pixels (fakes)
        pa.field("path", pa.string(), nullable=False),  # original location, or generator URI for fakes
        pa.field("generator_run", pa.string(), nullable=True),
        pa.field("seed", pa.int64(), nullable=True),
    ]
)

QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("path", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("size", pa.int64(), nullable=True),
    ]
)

DUPLICATE_SCHEMA = pa.schema(
    [
        pa.field("path", pa.string(), nullable=False),
        pa.field("duplicate_of", pa.string(), nullable=False),
        pa.field("sha256", pa.string(), nullable=False),
    ]
)

IMAGES_DIR = "images"
QUARANTINE_FILE = "quarantine.parquet"
DUPLICATES_FILE = "duplicates.parquet"
SUMMARY_FILE = "summary.json"
