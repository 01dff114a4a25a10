"""One run's folder from claim to final status, shared by simulate.py (fedsim.runner),
the Flower App (fedsim.flower_app) and the benchmarks' own loops (bench/).

A run folder is claimed atomically (two runs named alike in the same second get two
folders, never one), config.json says `running` while rounds are being written and
then why the run ended: `complete`, `interrupted`, `aborted` or `diverged` (with the
reason), or `failed` (with the error). The folder is claimed once everything that can
be wrong with the input has been checked: bad input leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fedsim.config import ConfigError, RunConfig, flag
from fedsim.results import FailureReporter, Timings, run_name, write_config_json
from fedsim.server_app import RunAborted

CONFIG_JSON = "config.json"
# what write_config_json and RunStatus put into config.json themselves
STATUS_KEYS = ("status", "config", "csv_columns", "versions", "hardware", "timings_seconds")
STATUS_KEYS += ("client_outcomes", "client_errors", "error")


def check_results_dir(parent: Path) -> None:
    """The nearest existing folder on the way to `parent` must be a writable folder."""
    existing = parent.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(flag("results_dir"), f"{parent} cannot be written (check {existing})")


def claim_run_dir(cfg: RunConfig) -> Path:
    """Create the run's folder, atomically. An explicit --name that exists is an error;
    a generated name (time and settings) that another run took in the same second gets
    a suffix (-2, -3, ...)."""
    parent = Path(cfg.results_dir)
    check_results_dir(parent)
    base = run_name(cfg)
    for attempt in range(1, 1000):
        run_dir = parent / (base if attempt == 1 else f"{base}-{attempt}")
        try:
            parent.mkdir(parents=True, exist_ok=True)
            run_dir.mkdir()
            return run_dir
        except FileExistsError:
            if cfg.name:
                raise ConfigError(
                    flag("name"), f"{run_dir} already exists; choose another --name or --resume it"
                ) from None
        except OSError as error:
            raise ConfigError(flag("results_dir"), f"cannot create {run_dir}: {error}") from None
    raise ConfigError(flag("name"), f"{parent} holds too many runs named {base}")


class RunStatus:
    """config.json for one run: the resolved config, versions, hardware, timings, client
    outcomes, and the status, written atomically at the start and at the end."""

    def __init__(
        self, run_dir: Path, cfg: RunConfig, timings: Timings, extra: dict[str, Any]
    ) -> None:
        self.path = run_dir / CONFIG_JSON
        self.cfg, self.timings, self.extra = cfg, timings, extra
        self.failures = FailureReporter()

    def write(self, status: str, **more: Any) -> None:
        write_config_json(
            self.path,
            self.cfg,
            self.timings,
            status,
            {**self.extra, **self.failures.summary(), **more},
        )

    @contextlib.contextmanager
    def running(self, started: float) -> Iterator[None]:
        """`running` while the body runs, then the status that says how it ended."""
        self.write("running")
        status, error = "failed", None
        try:
            yield
            status = "complete"
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        except RunAborted as aborted:
            status, error = aborted.status, str(aborted)
            raise
        except BaseException as failure:
            error = f"{type(failure).__name__}: {failure}"
            raise
        finally:
            self.timings.total = time.perf_counter() - started
            self.write(status, error=error)
