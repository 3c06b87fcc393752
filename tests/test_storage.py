"""Storage URIs, explicit S3 settings and atomic writes, against moto's real S3 endpoint."""

from __future__ import annotations

import os

import pyarrow.fs as pafs
import pytest

from cxr_ray import storage
from cxr_ray.storage import S3Settings, StorageError


def test_resolve_paths_and_uris(tmp_path):
    fs, path = storage.resolve(str(tmp_path / "a"))
    assert isinstance(fs, pafs.LocalFileSystem) and path == str(tmp_path / "a")
    assert storage.resolve(f"file://{tmp_path}/b")[1] == f"{tmp_path}/b"
    settings = S3Settings(endpoint_url="http://127.0.0.1:9", region="eu-west-1", access_key="k", secret_key="s")
    fs, path = storage.resolve("s3://bucket/some/key/", settings)
    assert isinstance(fs, pafs.S3FileSystem) and path == "bucket/some/key"
    assert fs.region == "eu-west-1"
    with pytest.raises(StorageError, match="needs a bucket"):
        storage.resolve("s3://")
    with pytest.raises(StorageError, match="unsupported URI scheme"):
        storage.resolve("gs://bucket/x")


def test_settings_from_standard_environment():
    env = {
        "AWS_ENDPOINT_URL": "http://minio:9000",
        "AWS_DEFAULT_REGION": "ap-south-1",
        "AWS_ACCESS_KEY_ID": "id",
        "AWS_SECRET_ACCESS_KEY": "secret",
    }
    s = S3Settings.from_env(env)
    assert (s.endpoint_url, s.region, s.access_key, s.secret_key) == ("http://minio:9000", "ap-south-1", "id", "secret")
    assert S3Settings.from_env({**env, "CXR_RAY_S3_ENDPOINT": "http://other:1"}).endpoint_url == "http://other:1"
    assert "secret" not in s.redacted() and "id" not in s.redacted().replace("endpoint", "")


def test_atomic_local_write_leaves_no_temp_files(tmp_path):
    target = tmp_path / "deep" / "file.json"
    storage.write_json_atomic(str(target), {"a": 1})
    storage.write_json_atomic(str(target), {"a": 2})
    assert storage.read_json(str(target)) == {"a": 2}
    assert os.listdir(target.parent) == ["file.json"]


def test_s3_roundtrip_and_publish(s3_server, s3_bucket):
    root = f"s3://{s3_bucket}/out"
    staging = storage.staging_uri(root)
    storage.write_bytes_atomic(storage.join(staging, "part", "x.bin"), b"new", s3_server)
    storage.write_bytes_atomic(storage.join(staging, storage.SUCCESS_MARKER), b"", s3_server)
    storage.write_bytes_atomic(storage.join(root, "stale.bin"), b"old", s3_server)
    with pytest.raises(StorageError, match="already exists"):
        storage.publish_dir(staging, root, s3_server)
    storage.publish_dir(staging, root, s3_server, overwrite=True)
    # On S3 the output is the version folder the pointer names; what it replaced is gone.
    version = staging.rsplit("/", 1)[1]
    names = [i.path.split("/out/")[1] for i in storage.list_files(root, s3_server)]
    assert names == [storage.POINTER_FILE, f"{version}/{storage.SUCCESS_MARKER}", f"{version}/part/x.bin"]
    assert storage.published(root, s3_server) == staging
    assert storage.read_bytes(storage.join(storage.published(root, s3_server), "part", "x.bin"), s3_server) == b"new"
    assert storage.is_complete(root, s3_server)


def test_local_publish_swaps_whole_folders(tmp_path):
    final, staging = tmp_path / "final", tmp_path / "stage"
    (final / "old").mkdir(parents=True)
    (final / "old" / "f").write_text("old")
    (staging / "new").mkdir(parents=True)
    (staging / "new" / "f").write_text("new")
    storage.publish_dir(str(staging), str(final), overwrite=True)
    assert [p.name for p in final.iterdir()] == ["new"] and sorted(p.name for p in tmp_path.iterdir()) == ["final"]


@pytest.mark.parametrize("where", ["local", "s3"])
def test_staged_output_publishes_whole_or_leaves_the_old_folder(where, tmp_path, request):
    if where == "s3":
        s3 = request.getfixturevalue("s3_server")
        dest = f"s3://{request.getfixturevalue('s3_bucket')}/staged/out"
    else:
        s3, dest = None, str(tmp_path / "out")
    with storage.staged_output(dest, s3) as staging:
        storage.write_bytes_atomic(storage.join(staging, "a.txt"), b"first", s3)
    assert storage.read_bytes(storage.join(storage.published(dest, s3), "a.txt"), s3) == b"first" and storage.is_complete(dest, s3)

    # A failure half-way: the old folder stays as it was and no staging folder is left behind.
    with pytest.raises(RuntimeError, match="half-way"):
        with storage.staged_output(dest, s3, overwrite=True) as staging:
            storage.write_bytes_atomic(storage.join(staging, "a.txt"), b"second", s3)
            raise RuntimeError("failed half-way")
    assert storage.read_bytes(storage.join(storage.published(dest, s3), "a.txt"), s3) == b"first"
    assert not storage.exists(staging, s3) and storage.is_complete(dest, s3)

    with pytest.raises(StorageError, match="already exists"):
        with storage.staged_output(dest, s3) as staging:
            storage.write_bytes_atomic(storage.join(staging, "a.txt"), b"third", s3)
    assert storage.read_bytes(storage.join(storage.published(dest, s3), "a.txt"), s3) == b"first" and not storage.exists(staging, s3)
