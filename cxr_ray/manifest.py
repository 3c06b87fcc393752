"""The study manifest: each stage's status, config hash, outputs and timing, at the study root.

A stage is skipped when the manifest says it finished with the same config
hash; its hash folds in the hashes of the stages it depends on, so a changed
config re-runs exactly what depends on it. Hashes hold content, not
locations: ingest's covers the source's fingerprint, and the stages below it
fold in the ingested table's identity (cxr_ray/data/fingerprint.py). A stage left "running" (the job
died) is run again, and resumes through its own outputs (Ray Train run
names, complete-markers).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from cxr_ray import storage
from cxr_ray.storage import S3Settings

MANIFEST_FILE = "manifest.json"


def stage_hash(config: Any, upstream: list[str]) -> str:
    blob = json.dumps({"config": config, "upstream": sorted(upstream)}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class Manifest:
    """Read-modify-write of manifest.json; thread-safe so concurrent trainings can record themselves."""

    root: str
    s3: S3Settings | None = None
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def load(cls, root: str, s3: S3Settings | None = None) -> "Manifest":
        uri = storage.join(root, MANIFEST_FILE)
        stages = storage.read_json(uri, s3)["stages"] if storage.exists(uri, s3) else {}
        return cls(root=root, s3=s3, stages=stages)

    def _save(self) -> None:
        storage.write_json_atomic(storage.join(self.root, MANIFEST_FILE), {"stages": self.stages}, self.s3)

    def is_done(self, name: str, digest: str) -> bool:
        entry = self.stages.get(name)
        return bool(entry) and entry.get("status") == "done" and entry.get("config_hash") == digest

    def start(self, name: str, digest: str) -> None:
        with self._lock:
            self.stages[name] = {"status": "running", "config_hash": digest, "started": time.time(), "outputs": {}}
            self._save()

    def finish(self, name: str, outputs: dict[str, Any]) -> None:
        with self._lock:
            entry = self.stages[name]
            entry.update(status="done", ended=time.time(), outputs=outputs)
            entry["seconds"] = round(entry["ended"] - entry["started"], 2)
            self._save()

    def fail(self, name: str, error: BaseException) -> None:
        with self._lock:
            entry = self.stages.setdefault(name, {"started": time.time()})
            entry.update(status="failed", ended=time.time(), error=f"{type(error).__name__}: {error}"[:2000])
            self._save()

    def outputs(self, name: str) -> dict[str, Any]:
        return self.stages[name]["outputs"]

    def run(self, name: str, digest: str, fn: Callable[[], dict[str, Any]], log=print) -> dict[str, Any]:
        """Run `fn` as stage `name` unless already done with this hash; record the outcome."""
        if self.is_done(name, digest):
            log(f"[{name}] done earlier with the same config; skipping")
            return self.outputs(name)
        previous = self.stages.get(name, {}).get("status")
        if previous in ("running", "failed"):
            log(f"[{name}] was {previous} last time; running again (resumes from its checkpoints)")
        self.start(name, digest)
        try:
            outputs = fn()
        except BaseException as exc:
            self.fail(name, exc)
            raise
        self.finish(name, outputs)
        return outputs
