"""What every `cxr-ray` command shares: the common options, S3 settings, config files, running a stage and error reporting.

Only typer and the standard library at import time: heavy modules load inside the functions.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, TypeVar

import typer

T = TypeVar("T")

# Options that several commands take with the same meaning: defined once, so their flags and help never drift apart.
S3_ENDPOINT = typer.Option(
    None, "--s3-endpoint", envvar="CXR_RAY_S3_ENDPOINT", help="S3-compatible endpoint URL, e.g. http://127.0.0.1:9000."
)
S3_REGION = typer.Option(None, "--s3-region", help="S3 region (default: AWS_REGION, else us-east-1).")
RAY_ADDRESS = typer.Option(None, "--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray).")
OVERWRITE_OUT = typer.Option(False, "--overwrite", help="Replace OUT if it exists.")
MAX_SCORING_ACTORS = typer.Option(None, help="Cap on scoring actors (default: one per GPU, else CPUs - 1).")
RUNS = typer.Option(..., "--runs", help="A finished run dir, or a runs root whose sub-folders are searched; repeatable.")
N_BOOT = typer.Option(1000, help="Bootstrap replicates for the 95% intervals.")
REAL_TABLE = typer.Option(None, help="Ingested real image table (path or s3://).")
MODEL = typer.Option(None, help="cnn, resnet18, resnet50 or mobilenet_v2.")
WORKERS_PER_TRIAL = typer.Option(None, help="Ray Train workers per trial (default 1).")
SEARCH_STORAGE = typer.Option(None, help="Search root (path or s3://, default runs/tune).")
SEARCH_NAME = typer.Option(None, help="Search name; the same name continues the same search.")
TRAINERS_SEED = typer.Option(None, help="Random seed of the trainers.")


def s3_settings(endpoint: Optional[str], region: Optional[str]) -> Any:
    """S3Settings from the environment, with the command line's endpoint and region on top."""
    from dataclasses import replace

    from cxr_ray.storage import S3Settings

    settings = S3Settings.from_env()
    if endpoint:
        settings = replace(settings, endpoint_url=endpoint)
    if region:
        settings = replace(settings, region=region)
    return settings


def fail(message: str) -> None:
    """One red line on stderr and exit code 2: the user's input was wrong, not the program."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def known_errors() -> tuple[type[BaseException], ...]:
    """Errors that describe bad input (a path, a field, a file) and print as one line, never a traceback."""
    from cxr_ray.checkpoint import CheckpointError
    from cxr_ray.config import ConfigError
    from cxr_ray.data.datasets import DatasetError
    from cxr_ray.data.ingest import IngestError
    from cxr_ray.models.torchvision_models import PretrainedWeightsUnavailable
    from cxr_ray.storage import StorageError

    return (ConfigError, IngestError, StorageError, DatasetError, CheckpointError, PretrainedWeightsUnavailable)


def load_config(cls: type, config_file: Optional[str], overrides: dict) -> Any:
    """YAML file (optional) + command-line values that were given; unknown keys are errors."""
    from cxr_ray.config import ConfigError, from_dict

    data: dict = {}
    if config_file:
        import yaml

        try:
            with open(config_file) as f:
                data = yaml.safe_load(f) or {}
        except OSError as exc:
            raise ConfigError(f"{config_file}: cannot read config file ({exc.strerror})") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{config_file}: not valid YAML ({exc})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{config_file}: expected a mapping of config keys at the top level")
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return from_dict(cls, data)
    except ConfigError as exc:
        raise ConfigError(f"{config_file}: {exc}" if config_file else str(exc)) from None


def echo_err(message: str) -> None:
    typer.echo(message, err=True)


def guarded(fn: Callable[[], T]) -> T:
    """Run a stage; bad input (a known error) exits with one line naming it, never a traceback."""
    errors = known_errors()
    try:
        return fn()
    except errors as exc:
        fail(str(exc))
        raise  # unreachable: fail() exits


def run_stage(
    build: Callable[[], tuple[Any, Callable[..., T]]],
    s3_endpoint: Optional[str],
    s3_region: Optional[str],
    address: Optional[str],
) -> T:
    """`build()` -> (config, runner), then `runner(cfg, s3=..., log=..., address=...)`, the whole through `guarded`.

    `build` imports the stage lazily and builds its config, so a bad value is reported like any other known error.
    """

    def run() -> T:
        cfg, runner = build()
        return runner(cfg, s3=s3_settings(s3_endpoint, s3_region), log=echo_err, address=address)

    return guarded(run)


def run_configured(
    load: Callable[[], tuple[type, Callable[..., T]]],
    config_file: Optional[str],
    overrides: dict,
    s3_endpoint: Optional[str],
    s3_region: Optional[str],
    address: Optional[str],
) -> T:
    """A config from YAML + flags, then `runner(cfg, s3=..., log=..., address=...)`; `load` imports both lazily."""

    def build() -> tuple[Any, Callable[..., T]]:
        cls, runner = load()
        return load_config(cls, config_file, overrides), runner

    return run_stage(build, s3_endpoint, s3_region, address)
