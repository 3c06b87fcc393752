"""Publishing is all-or-nothing on S3: a proxy on 127.0.0.1 cuts the S3 connection in the middle of a publish.

The proxy forwards bytes between pyarrow and moto's server, counts requests of
one kind (by the start of their request line: every PUT, or the bulk delete
`POST /bucket?delete`) and from the Nth on cuts every connection, as a dead
network would (the S3 client's retries fail too). Publishing writes no
CopyObject any more: the output is built in a version folder inside DEST and
published by one PUT of the pointer `_CURRENT`, so the cuts land on each PUT
of the build, on the pointer, and on the removal of the old version. After each cut the output is
checked straight on moto: nothing partial under DEST's name, an old output still
whole; then the next run, through the healed proxy, publishes and cleans up.
"""

from __future__ import annotations

import dataclasses
import re
import socket
import threading

import pytest

from cxr_ray import storage
from cxr_ray.data.datasets import DatasetError, TaskData, load_arrays, require_complete
from cxr_ray.storage import StorageError

FILES = {"images/part-0.parquet": b"rows-0", "images/part-1.parquet": b"rows-1", "duplicates.parquet": b"dups", "summary.json": b"{}"}


class CuttingProxy:
    """TCP proxy to moto: counts requests whose first line matches `pattern`; from the `cut_at`-th on, cuts all."""

    def __init__(self, target_port: int):
        self.target = ("127.0.0.1", target_port)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.2)
        self.port = self.server.getsockname()[1]
        self.pattern, self.cut_at, self.seen, self.dead = re.compile(rb"^PUT "), None, 0, False
        self.lock, self.open, self.closed = threading.Lock(), set(), False
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, pattern: str = "^PUT ", cut_at: int | None = None) -> None:
        """Count requests whose request line matches `pattern`; cut from the `cut_at`-th on (None: never)."""
        with self.lock:
            self.pattern, self.cut_at, self.seen, self.dead = re.compile(pattern.encode()), cut_at, 0, False

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.server.accept()
            except (socket.timeout, OSError):
                continue
            if self.dead:
                client.close()
                continue
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        client.settimeout(5)
        with self.lock:
            self.open.update((client, upstream))
        threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()
        self._pump(client, upstream, True)

    def _pump(self, src: socket.socket, dst: socket.socket, requests: bool) -> None:
        try:
            while not self.dead:
                data = src.recv(65536)
                if not data or (requests and self._cuts(data)):
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with self.lock:
                self.open.discard(s)
            s.close()

    def _cuts(self, data: bytes) -> bool:
        """True when this chunk starts the request to cut at (it is never forwarded): every connection goes."""
        first = data.split(b"\r\n", 1)[0]
        with self.lock:
            if self.pattern.search(first) and first.endswith(b"HTTP/1.1"):
                self.seen += 1
                if self.cut_at is not None and self.seen >= self.cut_at:
                    self.dead = True
                    for s in list(self.open):
                        s.close()
        return self.dead

    def close(self) -> None:
        self.closed = True
        self.server.close()


@pytest.fixture()
def proxy(s3_server):
    port = int(s3_server.endpoint_url.rsplit(":", 1)[1])
    p = CuttingProxy(port)
    yield p, dataclasses.replace(s3_server, endpoint_url=f"http://127.0.0.1:{p.port}")
    p.close()


def publish(dest: str, s3, files: dict[str, bytes], overwrite: bool = False) -> None:
    with storage.staged_output(dest, s3, overwrite) as staging:
        for name, data in files.items():
            storage.write_bytes_atomic(storage.join(staging, name), data, s3)


def read_output(dest: str, s3) -> dict[str, bytes]:
    """Everything a reader sees at `dest`, through the one resolver; checks it is complete first."""
    folder = require_complete(dest, s3)
    base = folder[len("s3://"):].rstrip("/") + "/"
    return {
        f.path[len(base):]: storage.read_bytes(f"s3://{f.path}", s3)
        for f in storage.list_files(folder, s3)
        if f.path != base + storage.SUCCESS_MARKER
    }


def count(proxy, pattern: str, action) -> int:
    proxy.arm(pattern)
    action()
    return proxy.seen


def names_under(dest: str, s3) -> set[str]:
    return {i.path.rsplit("/", 1)[1] for i in storage._children(dest, s3)}


@pytest.fixture()
def no_grace(monkeypatch):
    """What a cut leaves is old enough to be removed at once (a build in progress is spared for STALE_BUILD_S)."""
    monkeypatch.setattr(storage, "STALE_BUILD_S", 0.0)


def test_cut_in_a_new_publish_shows_nothing_and_the_next_run_publishes(proxy, s3_server, s3_bucket, no_grace):
    p, via_proxy = proxy
    puts = count(p, "^PUT ", lambda: publish(f"s3://{s3_bucket}/probe", via_proxy, FILES))
    assert puts >= len(FILES) + 2  # the files, _SUCCESS, then the pointer (small writes may be multipart)
    for n in range(1, puts + 1):
        dest = f"s3://{s3_bucket}/new-{n}"
        p.arm("^PUT ", cut_at=n)
        with pytest.raises(StorageError):
            publish(dest, via_proxy, FILES)
        # Straight on moto: no output under the final name, nothing a reader would take.
        assert not storage.has_output(dest, s3_server) and not storage.is_complete(dest, s3_server)
        with pytest.raises(DatasetError, match="not a complete"):
            require_complete(dest, s3_server)
        assert not storage.exists(storage.join(dest, "duplicates.parquet"), s3_server)

        p.arm()
        publish(dest, via_proxy, {**FILES, "summary.json": b"{\"run\": 2}"})  # no "already exists"
        assert read_output(dest, s3_server) == {**FILES, "summary.json": b"{\"run\": 2}"}
        assert len(names_under(dest, s3_server)) == 2  # the pointer and the version it names: leftovers removed


def test_cut_in_an_overwrite_keeps_the_old_output_whole(proxy, s3_server, s3_bucket, no_grace):
    p, via_proxy = proxy
    old = {"images/part-0.parquet": b"old-0", "summary.json": b"{\"old\": 1}"}
    new = {name: b"new-" + data for name, data in FILES.items()}
    puts = count(p, "^PUT ", lambda: publish(f"s3://{s3_bucket}/probe", via_proxy, new))
    cuts = [("^PUT ", n) for n in range(1, puts + 1)] + [(rf"^POST /{s3_bucket}\?delete", 1)]
    for i, (pattern, n) in enumerate(cuts):
        dest = f"s3://{s3_bucket}/over-{i}"
        publish(dest, s3_server, old)
        p.arm(pattern, cut_at=n)
        if pattern == "^PUT ":
            with pytest.raises(StorageError):
                publish(dest, via_proxy, new, overwrite=True)
            assert read_output(dest, s3_server) == old  # the old output, whole, under its name
        else:
            # Cut while removing the old version, after the switch: published; the old one is unreachable.
            publish(dest, via_proxy, new, overwrite=True)
            assert p.dead and read_output(dest, s3_server) == new
        p.arm()
        publish(dest, via_proxy, new, overwrite=True)
        assert read_output(dest, s3_server) == new
        assert len(names_under(dest, s3_server)) == 2


def test_an_output_from_before_pointers_is_read_and_replaced(s3_server, s3_bucket):
    dest = f"s3://{s3_bucket}/legacy"
    for name, data in {**FILES, storage.SUCCESS_MARKER: b""}.items():
        storage.write_bytes_atomic(storage.join(dest, name), data, s3_server)
    assert storage.published(dest, s3_server) == dest and read_output(dest, s3_server) == FILES
    with pytest.raises(StorageError, match="already exists"):
        publish(dest, s3_server, {"a": b"1"})
    publish(dest, s3_server, {"a": b"1"}, overwrite=True)
    assert read_output(dest, s3_server) == {"a": b"1"} and len(names_under(dest, s3_server)) == 2


def test_a_pointer_out_of_its_folder_is_refused(s3_server, s3_bucket):
    dest = f"s3://{s3_bucket}/evil"
    storage.write_json_atomic(storage.join(dest, storage.POINTER_FILE), {"version": "../other"}, s3_server)
    with pytest.raises(DatasetError, match="not a valid output pointer"):
        require_complete(dest, s3_server)


def test_a_build_in_progress_is_spared_and_a_finished_orphan_removed(s3_server, s3_bucket):
    dest = f"s3://{s3_bucket}/busy"
    building, orphan = storage.staging_uri(dest), storage.staging_uri(dest)
    storage.write_bytes_atomic(storage.join(building, "part"), b"x", s3_server)
    storage.write_bytes_atomic(storage.join(orphan, storage.SUCCESS_MARKER), b"", s3_server)
    assert not storage.has_output(dest, s3_server)
    storage.check_destination(dest, s3_server)  # leftovers are no output: no "already exists"
    publish(dest, s3_server, {"a": b"1"})
    left = names_under(dest, s3_server)
    assert building.rsplit("/", 1)[1] in left and orphan.rsplit("/", 1)[1] not in left


def test_an_ingest_cut_mid_publish_loses_nothing_and_the_next_run_publishes(
    ray_local, proxy, s3_server, s3_bucket, kaggle_tree, no_grace
):
    """The issue's case, end to end: the connection dies at the second object the ingest's driver writes
    (duplicates.parquet, after quarantine.parquet), first for a new DEST, then for an --overwrite of a complete one."""
    from cxr_ray.data.ingest import IngestConfig, IngestError, run_ingest

    p, via_proxy = proxy
    dest, quiet = f"s3://{s3_bucket}/study/real-64", lambda _: None
    driver_writes = rf"^(PUT|POST) /{s3_bucket}/study/real-64/_v-[^/ ]+/(quarantine|duplicates)\.parquet"
    p.arm(driver_writes, cut_at=2)
    with pytest.raises((StorageError, IngestError, OSError)):  # ingest lets pyarrow's OSError through
        run_ingest(IngestConfig(src=str(kaggle_tree), dest=dest), s3=via_proxy, log=quiet)
    assert p.dead and not storage.has_output(dest, s3_server)
    with pytest.raises(DatasetError, match="not a complete"):
        require_complete(dest, s3_server)

    p.arm()
    first = run_ingest(IngestConfig(src=str(kaggle_tree), dest=dest), s3=via_proxy, log=quiet)  # no "already exists"
    rows = load_arrays(TaskData(task="pneumonia", real=dest), ["train", "val", "test"], s3_server)["target"].size
    assert rows == first["rows"] and len(names_under(dest, s3_server)) == 2

    p.arm(driver_writes, cut_at=2)
    with pytest.raises((StorageError, IngestError, OSError)):  # ingest lets pyarrow's OSError through
        run_ingest(IngestConfig(src=str(kaggle_tree), dest=dest, overwrite=True, seed=5), s3=via_proxy, log=quiet)
    assert p.dead
    # The old table is still whole under its name.
    assert load_arrays(TaskData(task="pneumonia", real=dest), ["train", "val", "test"], s3_server)["target"].size == rows
    old = storage.read_json(storage.join(require_complete(dest, s3_server), "summary.json"), s3_server)
    assert old["rows"] == rows and old["seed"] != 5

    p.arm()
    run_ingest(IngestConfig(src=str(kaggle_tree), dest=dest, overwrite=True, seed=5), s3=via_proxy, log=quiet)
    summary = storage.read_json(storage.join(require_complete(dest, s3_server), "summary.json"), s3_server)
    assert (summary["rows"], summary["seed"]) == (rows, 5) and len(names_under(dest, s3_server)) == 2
