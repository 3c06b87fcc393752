"""Ray Data ingest against local folders and moto's S3 server, with real X-rays."""

from __future__ import annotations

import io
import json
import shutil
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import SHARED_DATA, boto3_client, upload_tree
from test_layout_decode import huge_png
from cxr_ray import storage
from cxr_ray.config import IngestConfig
from cxr_ray.data import schema
from cxr_ray.data.ingest import IngestError, run_ingest
from cxr_ray.storage import S3Settings


def read_images(uri: str, s3: S3Settings | None = None):
    fs, path = storage.resolve(uri, s3)
    return pq.read_table(storage.resolve(storage.join(storage.published(uri, s3), schema.IMAGES_DIR), s3)[1], filesystem=fs)


def add_bad_files(root: Path) -> dict[str, str]:
    """Every kind of bad input the ingest must quarantine; returns name -> expected reason start."""
    normal = sorted((root / "train" / "NORMAL").iterdir())
    real = normal[0].read_bytes()
    (root / "train" / "NORMAL" / "IM-9990-0001.jpeg").write_bytes(b"")
    (root / "train" / "NORMAL" / "IM-9991-0001.jpeg").write_bytes(real[: len(real) // 3])
    (root / "train" / "PNEUMONIA" / "person9992_virus_1.jpeg").write_text("not an x-ray\n")
    (root / "train" / "COVID").mkdir()
    (root / "train" / "COVID" / "person9993_virus_1.jpeg").write_bytes(real)
    (root / "train" / "notes.txt").write_text("loose file")
    # A byte-identical copy of a kept image.
    (root / "train" / "NORMAL" / "IM-9994-0001.jpeg").write_bytes(real)
    # Valid but unusual encodings: 16-bit gray PNG and RGB PNG.
    gray = np.asarray(Image.open(io.BytesIO(real)).convert("L"), dtype=np.uint16)
    Image.fromarray(gray * 64 + 7).save(root / "train" / "NORMAL" / "IM-9995-0001.png")
    Image.open(io.BytesIO(real)).convert("RGB").save(root / "train" / "PNEUMONIA" / "person9996_bacteria_1.png")
    return {
        "IM-9990-0001.jpeg": "empty file",
        "IM-9991-0001.jpeg": "corrupt or truncated",
        "person9992_virus_1.jpeg": "not an image",
        "person9993_virus_1.jpeg": "unknown class folder 'COVID'",
        "notes.txt": "not inside a {split}/{class}/ folder",
    }


def test_ingest_accounts_for_every_file(ray_local, kaggle_tree, tmp_path):
    expected_reasons = add_bad_files(kaggle_tree)
    n_files = sum(1 for p in kaggle_tree.rglob("*") if p.is_file())
    dest = tmp_path / "out"
    summary = run_ingest(IngestConfig(src=str(kaggle_tree), dest=str(dest), resolution=64, seed=1))

    assert summary["files_found"] == n_files
    assert summary["rows"] + summary["quarantined"] + summary["duplicates"] == n_files
    assert summary["accounted"] is True
    assert summary["duplicates"] == 1 and summary["quarantined"] == len(expected_reasons)

    quarantine = pq.read_table(dest / schema.QUARANTINE_FILE).to_pylist()
    got = {Path(q["path"]).name: q["reason"] for q in quarantine}
    assert set(got) == set(expected_reasons)
    for name, start in expected_reasons.items():
        assert got[name].startswith(start), (name, got[name])

    dups = pq.read_table(dest / schema.DUPLICATES_FILE).to_pylist()
    assert len(dups) == 1
    pair = {Path(dups[0]["path"]).name, Path(dups[0]["duplicate_of"]).name}
    assert pair == {"IM-9994-0001.jpeg", sorted((kaggle_tree / "train" / "NORMAL").glob("IM-0*"))[0].name}

    table = read_images(str(dest))
    assert table.schema.equals(schema.IMAGE_SCHEMA, check_metadata=False)
    assert table.num_rows == summary["rows"] == 12 + 6 + 2
    rows = table.to_pylist()
    for r in rows:
        assert r["height"] == r["width"] == 64 and len(r["image"]) == 64 * 64
        assert r["source"] == "real" and r["label"] == ("NORMAL", "PNEUMONIA").index(r["class_name"])
    # The summary's counts (from what the tasks report) match the written table.
    by_split_class: dict = defaultdict(dict)
    for (split, cls), n in Counter((r["split"], r["class_name"]) for r in rows).items():
        by_split_class[split][cls] = n
    assert summary["by_split_class"] == dict(by_split_class)
    assert summary["patients_by_split"] == {
        split: len({r["patient_id"] for r in rows if r["split"] == split}) for split in by_split_class
    }
    # Every input path is in exactly one of: rows, quarantine, duplicates.
    all_paths = [r["path"] for r in rows] + [q["path"] for q in quarantine] + [d["path"] for d in dups]
    assert len(all_paths) == len(set(all_paths)) == n_files
    # The 16-bit PNG kept its contrast (min-max scaled, not crushed to black).
    png16 = next(r for r in rows if r["path"].endswith("IM-9995-0001.png"))
    pixels = np.frombuffer(png16["image"], np.uint8)
    assert pixels.max() > 200  # a plain >>8 would cap it near 64
    original = next(r for r in rows if r["sha256"] == dups[0]["sha256"])
    assert np.abs(pixels.astype(int) - np.frombuffer(original["image"], np.uint8)).mean() < 12

    written = json.loads((dest / schema.SUMMARY_FILE).read_text())
    assert written["rows"] == summary["rows"] and (dest / storage.SUCCESS_MARKER).exists()


def test_validation_is_carved_by_patient_and_stratified(ray_local, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(Path(__file__).resolve().parents[1] / "cxr_ray" / "sample" / "chest_xray", src)
    summary = run_ingest(IngestConfig(src=str(src), dest=str(tmp_path / "out"), val_fraction=0.2, seed=3))
    rows = read_images(str(tmp_path / "out")).select(["split", "patient_id", "class_name"]).to_pylist()
    splits_of = defaultdict(set)
    for r in rows:
        splits_of[r["patient_id"]].add(r["split"])
    assert all(len(s) == 1 for s in splits_of.values()), "a patient is in two splits"
    assert set(summary["by_split_class"]["val"]) == {"NORMAL", "PNEUMONIA"}
    # Same seed, same split; another seed, another split.
    again = run_ingest(IngestConfig(src=str(src), dest=str(tmp_path / "again"), val_fraction=0.2, seed=3))
    other = run_ingest(IngestConfig(src=str(src), dest=str(tmp_path / "other"), val_fraction=0.2, seed=4))
    val = lambda d: {r["path"] for r in read_images(str(tmp_path / d)).to_pylist() if r["split"] == "val"}  # noqa: E731
    assert val("out") == val("again") != val("other")
    assert again["by_split_class"] == summary["by_split_class"]


def test_local_and_s3_ingest_are_identical(ray_local, s3_server, s3_bucket, kaggle_tree, tmp_path):
    add_bad_files(kaggle_tree)
    upload_tree(s3_server, kaggle_tree, s3_bucket, "raw/chest_xray")
    local = run_ingest(IngestConfig(src=str(kaggle_tree), dest=str(tmp_path / "local")), s3=s3_server)
    s3_src = f"s3://{s3_bucket}/raw/chest_xray"
    s3_dest = f"s3://{s3_bucket}/study/real-64"
    remote = run_ingest(IngestConfig(src=s3_src, dest=s3_dest), s3=s3_server)

    for key in ("files_found", "rows", "quarantined", "duplicates", "by_split_class", "patients_by_split"):
        assert local[key] == remote[key], key
    assert storage.is_complete(s3_dest, s3_server)

    def normalised(table, prefix):
        rows = table.to_pylist()
        for r in rows:
            r["path"] = r["path"][len(prefix) :]
        return sorted(rows, key=lambda r: r["path"])

    local_rows = normalised(read_images(str(tmp_path / "local")), str(kaggle_tree))
    remote_rows = normalised(read_images(s3_dest, s3_server), s3_src)
    assert local_rows == remote_rows
    summary = json.loads(
        # A plain S3 client reads it too, in the version folder that study/real-64/_CURRENT names.
        boto3_client(s3_server).get_object(Bucket=s3_bucket, Key=storage.published(s3_dest, s3_server).split("/", 3)[3] + "/summary.json")["Body"].read()
    )
    assert summary["accounted"] is True


def test_existing_destination_is_refused_then_replaced_whole(ray_local, kaggle_tree, tmp_path):
    dest = tmp_path / "out"
    run_ingest(IngestConfig(src=str(kaggle_tree), dest=str(dest)))
    first_files = sorted(p.name for p in (dest / schema.IMAGES_DIR).iterdir())
    with pytest.raises(IngestError, match="already exists; pass --overwrite"):
        run_ingest(IngestConfig(src=str(kaggle_tree), dest=str(dest)))
    assert sorted(p.name for p in (dest / schema.IMAGES_DIR).iterdir()) == first_files

    # Overwrite with a different input: only the new files remain.
    shutil.rmtree(kaggle_tree / "test")
    summary = run_ingest(IngestConfig(src=str(kaggle_tree), dest=str(dest), resolution=128, overwrite=True))
    table = read_images(str(dest))
    assert set(table.column("split").to_pylist()) <= {"train", "val"}
    assert set(table.column("height").to_pylist()) == {128}
    assert table.num_rows == summary["rows"]
    assert not set(first_files) & {p.name for p in (dest / schema.IMAGES_DIR).iterdir()}
    assert [p.name for p in tmp_path.iterdir() if "staging" in p.name or ".old-" in p.name] == []


def test_failed_overwrite_keeps_the_old_output(ray_local, kaggle_tree, tmp_path, monkeypatch):
    dest = tmp_path / "out"
    run_ingest(IngestConfig(src=str(kaggle_tree), dest=str(dest)))
    before = {p.relative_to(dest): p.read_bytes() for p in dest.rglob("*") if p.is_file()}

    def crash(*args, **kwargs):  # fault injection: the job dies while writing its summary
        raise KeyboardInterrupt

    monkeypatch.setattr(storage, "write_json_atomic", crash)
    with pytest.raises(KeyboardInterrupt):
        run_ingest(IngestConfig(src=str(kaggle_tree), dest=str(dest), resolution=128, overwrite=True))
    after = {p.relative_to(dest): p.read_bytes() for p in dest.rglob("*") if p.is_file()}
    assert after == before
    assert [p.name for p in tmp_path.iterdir() if "staging" in p.name] == []


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda root: root.mkdir(), "no files found"),
        (lambda root: (root / "train").mkdir(parents=True) or (root / "train" / "a.jpeg").write_bytes(b"x"), "no class folders"),
        (lambda root: root.mkdir() or (root / "x.jpeg").write_bytes(b"x"), "no split folders"),
        (lambda root: None, "source folder does not exist"),
        (lambda root: root.write_bytes(b"x"), "source is a file"),
    ],
    ids=["empty", "no-class-folders", "loose-files", "missing", "file"],
)
def test_wrong_layout_stops_before_writing(ray_local, tmp_path, build, message):
    src = tmp_path / "src"
    build(src)
    dest = tmp_path / "out"
    with pytest.raises(IngestError, match=message) as info:
        run_ingest(IngestConfig(src=str(src), dest=str(dest)))
    assert str(src) in str(info.value)
    assert not dest.exists()


def test_bad_credentials_and_unreachable_endpoint(ray_local, auth_s3_server, tmp_path):
    from conftest import free_port

    bad_keys = S3Settings(endpoint_url=auth_s3_server, region="us-east-1", access_key="AKIAWRONG", secret_key="nope")
    with pytest.raises(IngestError, match="S3 refused the credentials"):
        run_ingest(IngestConfig(src="s3://bucket/chest_xray", dest=str(tmp_path / "out")), s3=bad_keys)
    nowhere = S3Settings(endpoint_url=f"http://127.0.0.1:{free_port()}", region="us-east-1", access_key="a", secret_key="b")
    with pytest.raises(IngestError, match="cannot reach the S3 endpoint"):
        run_ingest(IngestConfig(src="s3://bucket/chest_xray", dest=str(tmp_path / "out")), s3=nowhere)
    assert not (tmp_path / "out").exists()


def test_s3_destination_bucket_must_exist(ray_local, s3_server, kaggle_tree):
    with pytest.raises(IngestError, match="bucket does not exist"):
        run_ingest(IngestConfig(src=str(kaggle_tree), dest="s3://no-such-bucket/out"), s3=s3_server)


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("relation", ["is", "is inside", "contains"])
def test_destination_overlapping_the_source_is_refused_before_writing(kaggle_tree, relation):
    """No Ray needed: the check runs before Ray starts. --overwrite would have deleted the source."""
    from typer.testing import CliRunner

    from cxr_ray.cli.app import app

    dest = {"is": kaggle_tree, "is inside": kaggle_tree / "train", "contains": kaggle_tree.parent}[relation]
    before = snapshot(kaggle_tree.parent)
    with pytest.raises(IngestError) as info:
        run_ingest(IngestConfig(src=str(kaggle_tree), dest=str(dest), overwrite=True))
    message = str(info.value)
    assert message == f"{dest}: the output {relation} the source {kaggle_tree}; choose a folder outside it"
    result = CliRunner().invoke(app, ["ingest", str(kaggle_tree), str(dest), "--overwrite"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert [line for line in result.output.splitlines() if line.strip()] == [f"error: {message}"]
    assert snapshot(kaggle_tree.parent) == before


def test_s3_destination_overlapping_the_source_is_refused(ray_local, s3_server, s3_bucket, kaggle_tree):
    upload_tree(s3_server, kaggle_tree, s3_bucket, "raw/chest_xray")
    client = boto3_client(s3_server)

    def objects() -> dict[str, str]:
        return {o["Key"]: o["ETag"] for o in client.list_objects_v2(Bucket=s3_bucket)["Contents"]}

    before = objects()
    src = f"s3://{s3_bucket}/raw/chest_xray"
    for relation, dest in (("is", src), ("is inside", f"{src}/train"), ("contains", f"s3://{s3_bucket}/raw")):
        with pytest.raises(IngestError, match=f"^{dest}: the output {relation} the source {src}; choose a folder outside it$"):
            run_ingest(IngestConfig(src=src, dest=dest, overwrite=True), s3=s3_server)
    assert objects() == before
    # A sibling prefix that merely starts with the same name is another folder.
    summary = run_ingest(IngestConfig(src=src, dest=f"{src}-64"), s3=s3_server, log=lambda m: None)
    after = objects()
    assert summary["accounted"] and {k: after[k] for k in before} == before and len(after) > len(before)


def test_huge_image_is_quarantined_and_the_ingest_completes(ray_local, kaggle_tree, tmp_path):
    (kaggle_tree / "train" / "NORMAL" / "IM-9997-0001.png").write_bytes(huge_png())
    # Exactly at a small custom limit an image passes; one pixel over, it is quarantined.
    (kaggle_tree / "train" / "PNEUMONIA" / "person9998_virus_1.png").write_bytes(huge_png(3000, 2000))
    n_files = sum(1 for p in kaggle_tree.rglob("*") if p.is_file())
    dest = tmp_path / "out"
    summary = run_ingest(IngestConfig(src=str(kaggle_tree), dest=str(dest), max_pixels=6_000_000), log=lambda m: None)
    assert summary["accounted"] and summary["files_found"] == n_files and summary["max_pixels"] == 6_000_000
    quarantine = {Path(q["path"]).name: q["reason"] for q in pq.read_table(dest / schema.QUARANTINE_FILE).to_pylist()}
    assert quarantine == {
        "IM-9997-0001.png": "image too large: 20000x20000 pixels (400 megapixels), over the limit of 6 megapixels (max_pixels=6000000)"
    }
    assert summary["quarantine_reasons"] == {"image too large": 1}
    assert "person9998_virus_1.png" in {Path(p).name for p in read_images(str(dest)).column("path").to_pylist()}


def test_symlink_loop_is_walked_once_and_a_self_link_is_counted(ray_local, kaggle_tree, tmp_path):
    import os

    n_real = sum(1 for p in kaggle_tree.rglob("*") if p.is_file())
    os.symlink("../..", kaggle_tree / "train" / "NORMAL" / "loop")  # train/NORMAL/loop -> the tree's root
    os.symlink("IM-9999-0001.jpeg", kaggle_tree / "train" / "NORMAL" / "IM-9999-0001.jpeg")  # a link to itself
    dest = tmp_path / "out"
    summary = run_ingest(IngestConfig(src=str(kaggle_tree), dest=str(dest)), log=lambda m: None)
    assert summary["files_found"] == n_real + 1 and summary["accounted"]
    assert (summary["rows"], summary["duplicates"], summary["quarantined"]) == (n_real, 0, 1)
    (row,) = pq.read_table(dest / schema.QUARANTINE_FILE).to_pylist()
    assert row["path"] == str(kaggle_tree / "train" / "NORMAL" / "IM-9999-0001.jpeg")
    assert row["reason"].startswith("unreadable: [Errno 40] Too many levels of symbolic links")
    assert not any("/loop/" in p for p in read_images(str(dest)).column("path").to_pylist())


@pytest.mark.skipif(not SHARED_DATA.exists(), reason="../shared/data not present")
def test_real_dataset_matches_its_readme(ray_local, tmp_path):
    """The whole shared dataset: README counts, duplicates, patient-disjoint splits."""
    summary = run_ingest(IngestConfig(src=str(SHARED_DATA), dest=str(tmp_path / "real")))
    assert summary["files_found"] == 5840 and summary["quarantined"] == 0 and summary["accounted"]
    dest = tmp_path / "real"
    rows = read_images(str(dest)).select(["split", "class_name", "patient_id", "path"]).to_pylist()
    dups = pq.read_table(dest / schema.DUPLICATES_FILE).to_pylist()
    # README: 30 groups of byte-identical files (two of them triples), all within one split and patient.
    assert len({d["duplicate_of"] for d in dups}) == 30 and len(dups) == summary["duplicates"]
    kaggle = defaultdict(int)
    for path in [r["path"] for r in rows] + [d["path"] for d in dups]:
        split, cls = Path(path).parts[-3:-1]
        kaggle[(split, cls)] += 1
    assert kaggle == {("train", "NORMAL"): 1341, ("train", "PNEUMONIA"): 3875, ("test", "NORMAL"): 234, ("test", "PNEUMONIA"): 390}
    splits_of = defaultdict(set)
    for r in rows:
        splits_of[r["patient_id"]].add(r["split"])
    assert all(len(s) == 1 for s in splits_of.values())
    val_share = sum(1 for r in rows if r["split"] == "val") / sum(1 for r in rows if r["split"] in ("train", "val"))
    assert 0.07 < val_share < 0.13


def test_size_grouped_blocks_keep_every_size_in_one_block():
    from cxr_ray.data.ingest import size_grouped_blocks

    rng = np.random.default_rng(0)
    items = [{"path": f"f{i:04d}", "size": int(s)} for i, s in enumerate(rng.integers(100, 140, size=500))]
    blocks = size_grouped_blocks(items, 4)
    assert sorted(i["path"] for b in blocks for i in b) == sorted(i["path"] for i in items)
    sizes = [{i["size"] for i in b} for b in blocks]
    assert all(not (a & b) for n, a in enumerate(sizes) for b in sizes[n + 1 :])  # duplicates always meet
    assert 3 <= len(blocks) <= 5 and max(len(b) for b in blocks) <= 125 + 30
    assert size_grouped_blocks([], 4) == [] and len(size_grouped_blocks(items[:1], 4)) == 1


def test_size_grouped_blocks_balance_decode_cost_not_file_count():
    from cxr_ray.data.ingest import _PER_FILE_COST_BYTES, size_grouped_blocks

    # Half small files, half five times larger: equal counts would give one
    # block far more bytes to decode than the other.
    items = [{"path": f"s{i:04d}", "size": 4_000 + i} for i in range(1000)]
    items += [{"path": f"l{i:04d}", "size": 20_000 + i} for i in range(1000)]
    blocks = size_grouped_blocks(items, 2)
    costs = [sum(i["size"] + _PER_FILE_COST_BYTES for i in b) for b in blocks]
    assert len(blocks) == 2 and max(costs) / min(costs) < 1.01
    assert len(blocks[0]) > len(blocks[1])  # the small files' block holds more of them
