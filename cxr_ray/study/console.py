"""What the study prints: a line when each stage starts and ends, a live indicator on a terminal, a closing table.

Quiet by default (`study_console`): everything else the study and Ray print
(the study's per-stage detail, worker logs Ray forwards to the driver, Ray's
Python and C++ logs) goes to the study's log file. The redirection is at the
file-descriptor level, so output from Ray's C++ core and from processes the
driver starts lands there too. Warnings the user can act on (a stage's own
"warning:" line, a Ray warning that is not on the list below) still reach
the terminal. `--verbose` (`PlainConsole`) leaves the console as Ray has it.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TextIO

# Ray warnings that are not true of, or not actionable in, the study: the study
# holds the CPUs with its own trainings on purpose, and switches progress bars
# off itself. Matched as substrings of the message.
HIDDEN_RAY_WARNINGS: tuple[str, ...] = (
    "does not have any available CPUs",
    "Progress bars disabled",
    "Progress bars for operators disabled",
)


@dataclass
class StageRow:
    name: str
    outcome: str  # "ran", "skipped" or "failed"
    seconds: float


class PlainConsole:
    """Every line through `log`, stage lines and detail alike: `--verbose`, tests, and library callers."""

    def __init__(self, log: Callable[[str], None] = print) -> None:
        self._log = log
        self.rows: list[StageRow] = []
        self.log_path: str | None = None

    def say(self, line: str) -> None:
        """A line the user should see."""
        self._log(line)

    def detail(self, line: str) -> None:
        """A stage's own progress line (epochs, tables written): the log file when quiet."""
        self._log(line)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time a stage that runs, and record how it ended; the start line is the caller's (it knows the ask)."""
        t0 = time.time()
        try:
            with self._live(name):
                yield
        except BaseException:
            self.rows.append(StageRow(name, "failed", time.time() - t0))
            self.say(f"[{name}] failed after {time.time() - t0:.0f} s")
            raise
        self.rows.append(StageRow(name, "ran", time.time() - t0))
        self.say(f"[{name}] done in {time.time() - t0:.0f} s")

    def skipped(self, name: str) -> None:
        self.rows.append(StageRow(name, "skipped", 0.0))

    @contextmanager
    def _live(self, name: str) -> Iterator[None]:
        yield

    def summary(self, seconds: float, report: str) -> None:
        """The closing table: each stage's outcome and time, the report, the log."""
        width = max([len(r.name) for r in self.rows] + [5])
        lines = [f"{'stage':<{width}}  outcome  seconds"]
        lines += [f"{r.name:<{width}}  {r.outcome:<7}  {r.seconds:7.0f}" for r in self.rows]
        lines.append(f"{'total':<{width}}  {'':<7}  {seconds:7.0f}")
        lines.append(f"report: {report}")
        if self.log_path:
            lines.append(f"log: {self.log_path}")
        for line in lines:
            self.say(line)


# A stage's own line the user can act on (the project writes them as "...: warning: ..."): the terminal too.
ACTIONABLE = re.compile(r"\bwarning:", re.IGNORECASE)


class QuietConsole(PlainConsole):
    """Stage lines and the summary to the terminal (and the log); detail to the log only, warnings to both."""

    def __init__(self, terminal: TextIO, log_path: str) -> None:
        super().__init__(print)  # print goes to the log file while the study's output is redirected
        self.terminal = terminal
        self.log_path = log_path
        self._progress: Any = None
        self._task: Any = None
        self._running = ""
        self._closed = False

    def say(self, line: str) -> None:
        print(line, flush=True)
        progress = self._progress  # read once: Ray's logging threads may call this as a stage ends
        if progress is not None:
            progress.console.print(line, markup=False, highlight=False)
        elif not self._closed:
            self.terminal.write(line + "\n")
            self.terminal.flush()

    def detail(self, line: str) -> None:
        if ACTIONABLE.search(line):
            self.say(line)
            return
        print(line, flush=True)
        progress, task = self._progress, self._task
        last = next((part.strip() for part in reversed(line.splitlines()) if part.strip()), "")
        if progress is not None and task is not None and last:
            progress.update(task, description=f"{self._running}: {last[:100]}")

    def close(self) -> None:
        """No more writes to the terminal stream (it is about to be closed)."""
        self._closed = True

    @contextmanager
    def _live(self, name: str) -> Iterator[None]:
        """A spinner, the stage's latest detail line and its elapsed time, on a terminal only (not in job logs)."""
        if not self.terminal.isatty():
            yield
            return
        from rich.console import Console
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self._running = f"[{name}]"
        # Not rich's stdout redirection: prints inside a stage belong in the log file, not on the terminal.
        progress = Progress(SpinnerColumn(), TextColumn("{task.description}", markup=False), TimeElapsedColumn(),
                            console=Console(file=self.terminal), transient=True, redirect_stdout=False,
                            redirect_stderr=False)
        with progress:
            self._task = progress.add_task(self._running, total=None)
            self._progress = progress
            try:
                yield
            finally:
                self._progress = self._task = None


def log_path_for(root: str) -> str:
    """Where a study's log goes: beside its results when they are local, else the machine's temp folder."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    from cxr_ray.storage import is_s3

    folder = os.path.join(tempfile.gettempdir(), "cxr-ray-logs") if is_s3(root) else os.path.join(root, "logs")
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, f"study-{stamp}.log")


class _ToTerminal(logging.Handler):
    """Ray's and cxr_ray's warnings a user can act on, one line each, to the terminal."""

    def __init__(self, console: QuietConsole) -> None:
        super().__init__(logging.WARNING)
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if not any(hidden in message for hidden in HIDDEN_RAY_WARNINGS):
            self.console.say(f"warning ({record.name}): {message.splitlines()[0] if message else ''}")


@contextmanager
def study_console(root: str, verbose: bool, s3: Any = None) -> Iterator[PlainConsole]:
    """The console a study run prints through; quiet unless `verbose`. A study on S3 gets its log copied to
    ROOT/logs/ there when it ends (the driver's temp folder goes with a cluster that is torn down)."""
    if verbose:
        yield PlainConsole(print)
        return
    log_path = log_path_for(root)
    with _redirected(log_path) as terminal:
        console = QuietConsole(terminal, log_path)
        console.say(f"log: {log_path} (every line; --verbose prints them here)")
        # Ray Data replaces its logger's handlers when first imported: import it first, then listen.
        import ray.data  # noqa: F401

        handler = _ToTerminal(console)
        loggers = [logging.getLogger(name) for name in ("ray", "ray.data", "cxr_ray")]
        for logger in loggers:
            logger.addHandler(handler)
        try:
            yield console
        except BaseException:
            console.say(f"log: {log_path} (what the study and Ray printed before it stopped)")
            raise
        finally:
            for logger in loggers:
                logger.removeHandler(handler)
            console.close()
    from cxr_ray.storage import is_s3

    if is_s3(root):
        _copy_log(log_path, root, s3)


def _copy_log(log_path: str, root: str, s3: Any) -> None:
    """The log beside the study's results on S3 (best effort: the study itself has finished)."""
    from cxr_ray import storage

    try:
        with open(log_path, "rb") as f:
            storage.write_bytes_atomic(storage.join(root, "logs", os.path.basename(log_path)), f.read(), s3)
    except OSError as exc:
        print(f"could not copy the log to {root}/logs: {exc}", file=sys.stderr)


@contextmanager
def _redirected(log_path: str) -> Iterator[TextIO]:
    """File descriptors 1 and 2 point at the log file inside; yields a stream to the terminal that was there."""
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    terminal = os.fdopen(os.dup(saved_out), "w", buffering=1)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    buffered = getattr(sys.stdout, "line_buffering", True)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # a killed driver loses no forwarded worker line
    try:
        yield terminal
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        if hasattr(sys.stdout, "reconfigure"):
            sys.stdout.reconfigure(line_buffering=buffered)
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        os.close(saved_out)
        os.close(saved_err)
        terminal.close()
