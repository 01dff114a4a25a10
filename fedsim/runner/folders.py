"""One run's folder from claim to final status, shared by fedsim.runner.lifecycle (simulate.py,
experiments, the Flower App) and the benchmarks' own loops (bench/).

A run folder is claimed atomically (two runs named alike in the same second get two
folders, never one) and locked by the process that runs it, until it ends: a second
process that would resume or re-run it is refused (the lock ends with its process,
`kill -9` included). config.json says `running` while rounds are being written and
then why the run ended: `complete`, `interrupted`, `aborted` or `diverged` (with the
reason), or `failed` (with the error). The folder is claimed once everything that can
be wrong with the input has been checked: bad input leaves nothing behind, and a
folder fedsim left half-made (killed before its config.json) is taken over.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedsim import algorithms
from fedsim.ground.config import RunConfig
from fedsim.ground.option import flag

if TYPE_CHECKING:
    from flwr.app import ArrayRecord
from fedsim.ground.errors import ConfigError, ConsoleClosed, OutputFailed, RunEnded
from fedsim.ground.files import CONFIG_JSON, is_temporary
from fedsim.outputs.callbacks import RoundCallback
from fedsim.outputs.console import FailureReporter
from fedsim.outputs.files import check_writable, write_config_json
from fedsim.outputs.records import RoundRecord, Timings, round_columns

# what write_config_json and RunStatus put into config.json themselves
STATUS_KEYS = ("status", "config", "csv_columns", "versions", "hardware", "timings_seconds")
STATUS_KEYS += ("client_outcomes", "client_errors", "error")


def check_results_dir(parent: Path) -> None:
    check_writable(flag("results_dir"), parent)


def run_name(cfg: RunConfig, now: float | None = None) -> str:
    """`--name`, else time and the settings that tell runs apart."""
    if cfg.name:
        return cfg.name
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    partition = cfg.partition + (f"{cfg.alpha:g}" if cfg.partition == "dirichlet" else "")
    return f"{stamp}-{cfg.strategy}-{cfg.clients}c-{partition}-r{cfg.rounds}-s{cfg.seed}"


def half_made(run_dir: Path) -> bool:
    """A folder fedsim claimed and was stopped in before it wrote anything: empty, or
    holding only atomic_write's temporary files."""
    return all(is_temporary(p.name) for p in run_dir.iterdir())


class RunLock:
    """An exclusive lock on a run folder (flock on the folder itself, no lock file),
    held while one process runs it; the system drops it when that process ends."""

    def __init__(self, run_dir: Path, option: str) -> None:
        self.fd = os.open(run_dir, os.O_RDONLY)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise ConfigError(
                option,
                f"{run_dir} is in use: another fedsim process is running it "
                "(wait for it to end, or stop it)",
            ) from None

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the last descriptor drops the lock
            self.fd = -1


@contextlib.contextmanager
def locked(run_dir: Path, option: str = "--resume") -> Iterator[Path]:
    """`run_dir`, locked for as long as the body runs."""
    lock = RunLock(run_dir, option)
    try:
        yield run_dir
    finally:
        lock.release()


@contextlib.contextmanager
def claimed_run_dir(cfg: RunConfig) -> Iterator[Path]:
    """A new run folder, created atomically and locked while the body runs. An explicit
    --name that exists is an error, unless fedsim left it half-made (then it is taken
    over); a generated name (time and settings) that another run took in the same
    second gets a suffix (-2, -3, ...). If the body fails before anything was written
    into the folder, the folder goes too: a run that never began leaves nothing."""
    run_dir, lock = _claim(cfg)
    try:
        yield run_dir
    except BaseException:
        with contextlib.suppress(OSError):
            if half_made(run_dir):
                shutil.rmtree(run_dir)
        raise
    finally:
        lock.release()


def _claim(cfg: RunConfig) -> tuple[Path, RunLock]:
    parent = Path(cfg.results_dir)
    check_results_dir(parent)
    base = run_name(cfg)
    for attempt in range(1, 1000):
        run_dir = parent / (base if attempt == 1 else f"{base}-{attempt}")
        try:
            parent.mkdir(parents=True, exist_ok=True)
            run_dir.mkdir()
            return run_dir, RunLock(run_dir, flag("name"))
        except FileExistsError:
            if cfg.name:
                return run_dir, _take_over(run_dir)
        except OSError as error:
            raise ConfigError(flag("results_dir"), f"cannot create {run_dir}: {error}") from None
    raise ConfigError(flag("name"), f"{parent} holds too many runs named {base}")


def _take_over(run_dir: Path) -> RunLock:
    """The lock on a folder fedsim left half-made; any other existing folder is refused."""
    if run_dir.is_dir() and half_made(run_dir):
        lock = RunLock(run_dir, flag("name"))
        if half_made(run_dir):  # still, now that no one else can write into it
            return lock
        lock.release()
    raise ConfigError(
        flag("name"), f"{run_dir} already exists; choose another --name or --resume it"
    )


class RunStatus(RoundCallback):
    """config.json for one run: the resolved config, versions, hardware, timings, client
    outcomes, and the status, written atomically at the start, after every round (the
    timings so far: a run killed after its last round keeps them) and at the end."""

    def __init__(
        self, run_dir: Path, cfg: RunConfig, timings: Timings, extra: dict[str, Any]
    ) -> None:
        self.path = run_dir / CONFIG_JSON
        self.cfg, self.timings, self.extra = cfg, timings, extra
        self.columns = round_columns(algorithms.is_personal(cfg))  # rounds.csv's
        self.failures = FailureReporter()
        self._started: float | None = None  # while `running`

    def on_round_end(self, record: RoundRecord, arrays: ArrayRecord) -> None:
        if self._started is not None:
            self.timings.total = time.perf_counter() - self._started
            self.write("running")

    def write(self, status: str, **more: Any) -> None:
        write_config_json(
            self.path,
            self.cfg,
            self.timings,
            status,
            {**self.extra, **self.failures.summary(), **more},
            self.columns,
        )

    def fail(self, reason: str) -> None:
        """The run ends here, for `reason`, before `running` could say so."""
        self.write("failed", error=reason)

    @contextlib.contextmanager
    def running(self, started: float) -> Iterator[None]:
        """`running` while the body runs, then the status that says how it ended."""
        self._started = started
        self.write("running")
        status, error = "failed", None
        try:
            yield
            status = "complete"
        except (KeyboardInterrupt, ConsoleClosed):
            status = "interrupted"
            raise
        except RunEnded as ended:
            status, error = ended.status, str(ended)
            raise
        except BaseException as failure:
            error = f"{type(failure).__name__}: {failure}"
            raise
        finally:
            self._started = None
            self.timings.total = time.perf_counter() - started
            try:
                self.write(status, error=error)
            except OutputFailed:
                if status == "complete":  # else the run's own error says more
                    raise
