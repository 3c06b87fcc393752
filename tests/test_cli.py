"""The command line: fast help without heavy imports, examples everywhere, clean errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from cxr_ray.cli.app import app

REPO = Path(__file__).resolve().parents[1]


def test_help_imports_no_heavy_modules():
    code = (
        "import sys; from cxr_ray.cli.app import app\n"
        "try:\n    app(['--help'], prog_name='cxr-ray')\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'ray', 'pyarrow', 'torchvision', 'matplotlib') if m in sys.modules]\n"
        "print('HEAVY', heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out
    assert "ingest" in out and "study" in out


def test_every_command_has_help_and_examples():
    runner = CliRunner()
    commands = [c.name or c.callback.__name__ for c in app.registered_commands]
    assert {"ingest", "study"} <= set(commands)
    for name in commands:
        result = runner.invoke(app, [name, "--help"])
        assert result.exit_code == 0, name
        assert "Examples" in result.output, name


def test_version_and_the_files_help_examples_name():
    """`--version` prints the installed version; a repository file a help example names exists and loads; the study
    paths examples name are the ones the study writes (cxr_ray/study/layout.py)."""
    import re
    from importlib.metadata import version

    from cxr_ray.study.layout import StudyLayout

    runner = CliRunner()
    assert runner.invoke(app, ["--version"]).output.strip() == f"cxr-ray {version('cxr-ray')}"
    layout = StudyLayout("runs/study")
    written = {layout.real(64), layout.fakes(64), layout.raw_fakes(64), layout.benign(64),
               *(layout.family_fakes(f, 64, raw) for f in ("sngan", "vae") for raw in (False, True))}
    commands = [c.name or c.callback.__name__ for c in app.registered_commands]
    for name in commands:
        text = " ".join(runner.invoke(app, [name, "--help"], terminal_width=400).output.split())
        for config in re.findall(r"--config (\S+\.yaml)", text):
            assert (REPO / config).is_file() or config.startswith("my-"), (name, config)
        for path in re.findall(r"(runs/study/data/[\w-]+)", text):
            assert path in written, (name, path)


def test_configs_load_as_their_config_class():
    import yaml

    from cxr_ray.train.classifier import ClassifierConfig

    assert ClassifierConfig(**yaml.safe_load((REPO / "configs" / "cnn.yaml").read_text())).model == "cnn"


def test_ingest_error_is_one_clear_line(tmp_path):
    missing, dest = tmp_path / "nowhere", tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "cxr_ray.cli.app", "ingest", str(missing), str(dest)],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "RAY_AUTH_MODE": "token", "HOME": str(tmp_path)},
    )
    assert proc.returncode == 2
    assert f"error: {missing}: source folder does not exist" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not dest.exists()


def test_bad_resolution_is_named():
    result = CliRunner().invoke(app, ["ingest", "a", "b", "--resolution", "100"])
    assert result.exit_code == 2 and "resolution must be one of" in result.output


def test_commands_report_errors_only_through_guarded():
    """No command module catches errors or calls fail() itself: cli/common.py:guarded is the one handler."""
    import ast

    for module in ("app", "eval_cmds", "generate_cmd", "train_gan_cmd", "benign_cmd", "claim_cmd", "generalise_cmd"):
        path = REPO / "cxr_ray" / "cli" / f"{module}.py"
        tree = ast.parse(path.read_text())
        tries = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Try)]
        fails = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "fail"]
        assert not tries and not fails, f"{path.name}: try at {tries}, fail() at {fails}"


def test_train_gan_name_with_two_classes_is_one_clear_line():
    result = CliRunner().invoke(app, ["train-gan", "table", "--name", "x", "--class", "NORMAL", "--class", "PNEUMONIA"])
    assert result.exit_code == 2
    assert "error: --name names one run" in result.output and "Traceback" not in result.output


def test_job_entrypoints_run_the_shared_commands():
    """Every jobs/*.py (but the study's) is `app([COMMAND, *argv])`: the same options, help and errors as cxr-ray."""
    jobs = {"ingest": "ingest", "generate": "generate", "train_gan": "train-gan", "train_classifier": "train",
            "tune": "tune", "evaluate": "evaluate", "scan": "scan", "benign": "benign", "claim": "claim",
            "generalise": "generalise"}
    assert {p.stem for p in (REPO / "jobs").glob("*.py")} == set(jobs) | {"full_study"}
    for job, command in jobs.items():
        source = (REPO / "jobs" / f"{job}.py").read_text()
        assert f'app(["{command}", *sys.argv[1:]], prog_name="jobs/{job}.py")' in source, job
    proc = subprocess.run([sys.executable, str(REPO / "jobs" / "train_gan.py"), "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "jobs/train_gan.py train-gan" in proc.stdout and "Examples" in proc.stdout


def test_study_is_a_typer_command_with_every_option_of_the_job_entrypoint():
    """`cxr-ray study --help` lists every option jobs/full_study.py takes (one table builds both); the table's
    profile names and resolutions are the package's; values reach the study's parser unchanged."""
    from cxr_ray.cli.study_options import PROFILE_NAMES, RESOLUTIONS, STUDY_OPTIONS, to_argv
    from cxr_ray.data.decode import SUPPORTED_RESOLUTIONS
    from cxr_ray.study.args import build_parser, study_options
    from cxr_ray.study.profile import PROFILES

    assert PROFILE_NAMES == tuple(sorted(PROFILES)) and RESOLUTIONS == SUPPORTED_RESOLUTIONS
    text = CliRunner().invoke(app, ["study", "--help"], terminal_width=200).output
    parser_flags = {a.option_strings[0] for a in build_parser()._actions if a.option_strings and a.dest != "help"}
    assert parser_flags == {o.flag for o in STUDY_OPTIONS}
    assert all(o.flag in text for o in STUDY_OPTIONS) and "Examples" in text
    values = {"profile": "full", "data": "d", "epochs": 3, "robust_aug": 0.25, "families": "", "sequential": True, "overwrite": False}
    opts = study_options(build_parser().parse_args(to_argv(values)))
    assert (opts.profile.name, opts.profile.data, opts.profile.epochs, opts.profile.robust_aug) == ("full", "d", 3, 0.25)
    assert opts.profile.families == () and opts.sequential and not opts.overwrite
    # The job entrypoint's own help (argparse %-formats help text: a bare "95%" once broke it).
    proc = subprocess.run([sys.executable, str(REPO / "jobs" / "full_study.py"), "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and all(o.flag in proc.stdout for o in STUDY_OPTIONS) and "95% intervals" in proc.stdout


def test_study_bad_option_is_one_line_before_ray():
    result = subprocess.run([sys.executable, "-m", "cxr_ray.cli.app", "study", "--models", "nope"],
                            capture_output=True, text=True, cwd=REPO)  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: --models: unknown model(s) nope; known models: cnn, resnet18, resnet50, mobilenet_v2"]
