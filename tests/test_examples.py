"""The examples users copy (issue 18): every `cxr-ray` command in README.md, docs/ and each command's --help parses as
written (its options exist, its values type-check), points only at files the repo has and at study paths the study
writes; the README's study commands that need no cluster run as written."""

from __future__ import annotations

import os
import re
import shlex
import subprocess

import pytest

from conftest import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def help_examples() -> list[tuple[str, str]]:
    """(where, command line) for each example paragraph of each command's help epilog."""
    import typer.main

    from cxr_ray.cli.app import app

    group = typer.main.get_command(app)
    found = []
    for name, command in group.commands.items():
        for paragraph in (command.epilog or "").split("\n\n"):
            text = paragraph.strip()
            if text.startswith("cxr-ray "):
                found.append((f"cxr-ray {name} --help", " ".join(text.split())))
    return found


def doc_examples() -> list[tuple[str, str]]:
    """(where, command line) for each `cxr-ray` command in a fenced shell block of README.md and docs/*.md."""
    found = []
    for doc in DOCS:
        for block in shell_blocks(doc.read_text()):
            for command in block.replace("\\\n", " ").splitlines():
                command = command.strip()
                if command.startswith("cxr-ray "):
                    found.append((doc.name, command))
    return found


def shell_blocks(text: str) -> list[str]:
    """The bodies of a Markdown file's fenced blocks tagged bash, sh, shell or nothing, read fence by fence."""
    blocks, body, tag = [], None, ""
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            if body is None:
                body, tag = [], line.lstrip()[3:].strip()
            else:
                if tag in ("", "bash", "sh", "shell"):
                    blocks.append("\n".join(body) + "\n")
                body = None
        elif body is not None:
            body.append(line)
    return blocks


EXAMPLES = help_examples() + doc_examples()


def words(command: str) -> list[str]:
    """A command line's words, without its comment and without `...` (an elided tail: "and the rest as above")."""
    return [w for w in shlex.split(command, comments=True) if w != "..."]


def test_there_are_examples_to_check():
    assert len(help_examples()) >= 20 and len(doc_examples()) >= 10


@pytest.mark.parametrize("where, command", EXAMPLES, ids=[f"{w}:{c[:60]}" for w, c in EXAMPLES])
def test_an_example_parses_as_written(where, command):
    """click parses it as the command would (options exist, values type-check) without running it."""
    import typer.main

    from cxr_ray.cli.app import app

    argv = words(command)[1:]
    group = typer.main.get_command(app)
    assert argv and argv[0] in group.commands, f"{where}: no command {argv[:1]}"
    if "..." in command.split():
        return  # an elided example names its options only in part: the command exists, the rest is prose
    group.commands[argv[0]].make_context(argv[0], argv[1:])


def study_paths() -> set[str]:
    """Every folder a study under runs/study writes that an example may name."""
    from cxr_ray.study.layout import StudyLayout

    layout = StudyLayout("runs/study")
    paths = {layout.root, layout.gan, layout.tune, layout.runs, layout.evaluate, layout.transfer, layout.claim,
             layout.generalise, layout.generalise_runs, layout.report, layout.tamper_runs, layout.attack}
    for px in (64, 128, 224):
        paths |= {layout.real(px), layout.fakes(px), layout.raw_fakes(px), layout.benign(px), layout.tampered(px)}
        paths |= {layout.family_fakes(f, px, raw) for f in ("sngan", "vae") for raw in (False, True)}
    return {os.path.relpath(p) if os.path.isabs(p) else p for p in paths}


@pytest.mark.parametrize("where, command", EXAMPLES, ids=[f"{w}:{c[:60]}" for w, c in EXAMPLES])
def test_an_example_names_files_that_exist_and_study_paths_the_study_writes(where, command):
    known = study_paths()
    for word in words(command):
        value = word.split("=", 1)[-1]
        if value.startswith("configs/"):
            assert (REPO / value).is_file(), f"{where}: {value} does not exist"
        if value.startswith("runs/study/"):
            top = "/".join(value.split("/")[:4])  # runs/study/X/Y: a run folder inside a layout folder is a name
            assert value.rstrip("/") in known or top in known or "/".join(value.split("/")[:3]) in known, (
                f"{where}: the study never writes {value}")


def readme_study_commands() -> list[str]:
    """The README's `bash scripts/study.sh ...` commands given inline or in a block."""
    text = (REPO / "README.md").read_text()
    return sorted(set(re.findall(r"bash scripts/study\.sh(?: --[a-z-]+)*", text)))


def test_the_readme_names_its_study_commands():
    assert {"bash scripts/study.sh", "bash scripts/study.sh --help", "bash scripts/study.sh --dry-run"} <= set(
        readme_study_commands())


@pytest.mark.parametrize("command", ["bash scripts/study.sh --help", "bash scripts/study.sh --dry-run"])
def test_a_readme_study_command_that_starts_no_ray_runs_as_written(command):
    """As written, from the repository root. (`bash scripts/study.sh` itself, the whole quick study, runs in the
    job-submit tests with the same entrypoint; it is not re-run here for time.)"""
    proc = subprocess.run(shlex.split(command), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    if command.endswith("--help"):
        assert "--profile" in proc.stdout and "--verbose" in proc.stdout
    else:
        assert "dry run; Ray not started" in proc.stdout and "ingest" in proc.stdout
