"""What every scoring job is given (finished runs, tables, an output folder) and the check that they fit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from cxr_ray import storage
from cxr_ray.config import ConfigError
from cxr_ray.scoring.runs import ModelRun
from cxr_ray.storage import S3Settings


TABLE_LABELS = {"real": "real", "fakes": "fake", "raw_fakes": "raw fake", "benign": "benign"}  # for error messages


@dataclass(frozen=True)
class ScoringConfig:
    """What every scoring job shares: finished runs, the tables whose test splits they score, the output folder.

    S3 settings are not part of it: the jobs take them as an argument (`s3=`).
    """

    runs: tuple[str, ...]  # run dirs, or runs roots searched one level deep
    real: str  # ingested real table: its test split
    dest: str
    fakes: str | None = None  # generated fake table: its test split (held-out seeds)
    n_boot: int = 1000
    seed: int = 0
    batch_size: int = 256
    max_actors: int | None = None
    resources: dict | None = None  # what each actor asks of a node, and the pool's bounds (cxr_ray.resources)
    overwrite: bool = False

    def __post_init__(self) -> None:
        from cxr_ray.config import at_least, check_fields

        check_fields(self)
        if not self.runs:
            raise ConfigError("runs: give at least one run dir or runs root")
        at_least(self, 1, "n_boot", "batch_size", "max_actors")
        at_least(self, 0, "seed")

    def tagged_tables(self) -> dict[str, str]:
        """Tag -> table URI of every table scored; each scored row carries its table's tag (scoring.pipeline)."""
        return {"real": self.real, **({"fakes": self.fakes} if self.fakes else {})}

    def tables(self) -> list[str]:
        return list(self.tagged_tables().values())

    def check_output(self, s3: S3Settings | None) -> None:
        """StorageError when the output folder is, holds or lies inside a runs folder or table that is read
        (`--overwrite` would delete the input; an output under a runs root would be searched as a run), or
        exists and `overwrite` is off. Nothing is written."""
        storage.check_separate(self.dest, list(self.runs), "runs folder")
        for tag, uri in self.tagged_tables().items():
            storage.check_separate(self.dest, [uri], f"{TABLE_LABELS.get(tag, tag)} table")
        storage.check_destination(self.dest, s3, self.overwrite)


def check_inputs(tables: Sequence[str], runs: Sequence[ModelRun], s3: S3Settings | None) -> int:
    """All tables complete and of one resolution, every model trained at it; returns the resolution."""
    from cxr_ray.data.datasets import DatasetError, resolution_of

    sizes = {uri: resolution_of(uri, s3) for uri in tables}
    if len(set(sizes.values())) > 1:
        raise DatasetError(f"tables of different resolutions: {sizes}")
    size = next(iter(sizes.values()))
    for run in runs:
        if run.image_size != size:
            raise DatasetError(f"run {run.run_dir} was trained at {run.image_size}px but {', '.join(tables)} is {size}px")
    return size
