"""Where a study keeps everything under its root: the one place the study's folder names are spelled.

The study writes through it and the report reads through it, so the two can
never disagree about where a stage's output lives. Local roots and s3://
roots alike (storage.join picks the separator).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cxr_ray import storage

# The manifest's stage entries, in the order the study runs them (the report lists them so).
STAGES: tuple[str, ...] = (
    "ingest", "gan", "gan_quality", "generate", "families", "tune", "train", "benign", "evaluate", "generalise", "tamper",
    "attack", "claim",
)
TIMELINE = "timeline"  # the manifest entry that keeps every training's start and end


@dataclass(frozen=True)
class StudyLayout:
    """The study root and the folders in it (the manifest file at the root is cxr_ray.manifest's)."""

    root: str

    @classmethod
    def at(cls, storage_arg: str) -> "StudyLayout":
        """The layout for a `--storage` value: s3:// as given, a local path made absolute (symlinks resolved).

        Stage configs and their hashes hold these paths, so the same folder must
        always give the same root.
        """
        return cls(storage_arg if storage.is_s3(storage_arg) else str(Path(storage_arg).resolve()))

    def _under(self, *parts: str) -> str:
        return storage.join(self.root, *parts)

    def real(self, resolution: int) -> str:
        """The ingested real images (an image table) at one resolution."""
        return self._under("data", f"real-{resolution}")

    def fakes(self, resolution: int) -> str:
        """The generated fakes stored as the archive stores its images (an image table) at one resolution."""
        return self._under("data", f"fake-archive-{resolution}")

    def raw_fakes(self, resolution: int) -> str:
        """The same generators' fakes as raw generator pixels (an image table): the second condition."""
        return self._under("data", f"fake-raw-{resolution}")

    def family_fakes(self, family: str, resolution: int, raw: bool = False) -> str:
        """A generator family's fakes, archive format or raw (the DCGAN's are `fakes` and `raw_fakes`)."""
        from cxr_ray.models.generators import DEFAULT_FAMILY

        if family == DEFAULT_FAMILY:
            return self.raw_fakes(resolution) if raw else self.fakes(resolution)
        return self._under("data", f"fake-{family}-{'raw' if raw else 'archive'}-{resolution}")

    def benign(self, resolution: int) -> str:
        """Real val and test images after a hospital's own re-processing (an image table with a `condition` column)."""
        return self._under("data", f"benign-{resolution}")

    def tampered(self, resolution: int) -> str:
        """Real images with a finding injected or removed by the tamper model (an image table with masks)."""
        return self._under("data", f"tampered-{resolution}")

    @property
    def tamper_runs(self) -> str:
        """Runs root of the tamper model and the localiser that finds its edits."""
        return self._under("tamper-runs")

    @property
    def attack(self) -> str:
        """How often the edits flip the pneumonia classifiers: the attack's output folder."""
        return self._under("attack")

    @property
    def tamper_examples(self) -> str:
        """The report's side-by-side tampering examples (original, edited, true mask, localiser's map)."""
        return self._under("tamper-examples")

    @property
    def gan(self) -> str:
        """Runs root of the DCGANs (and the GAN quality encoder)."""
        return self._under("gan")

    @property
    def tune(self) -> str:
        """Runs root of the hyperparameter searches."""
        return self._under("tune")

    @property
    def runs(self) -> str:
        """Runs root of the classifiers and detectors."""
        return self._under("runs")

    def run(self, name: str) -> str:
        return storage.join(self.runs, name)

    @property
    def evaluate(self) -> str:
        """The cross-evaluation's output folder."""
        return self._under("evaluate")

    @property
    def transfer(self) -> str:
        """The transfer matrix's output folder."""
        return self._under("transfer")

    @property
    def claim(self) -> str:
        """The seed's transfer claim: its output folder (its trainings live beside it, under `claim_runs`)."""
        return self._under("claim")

    @property
    def claim_runs(self) -> str:
        """Runs root of the transfer claim's fake-trained classifiers and their real controls."""
        return self._under("claim-runs")

    @property
    def generalise(self) -> str:
        """The leave-one-family-out output folder (its detectors train under `generalise_runs`)."""
        return self._under("generalise")

    @property
    def generalise_runs(self) -> str:
        """Runs root of the leave-one-family-out detectors, the deployed one (every family) among them."""
        return self._under("generalise-runs")

    @property
    def report(self) -> str:
        return self._under("report")
