"""Writing a run's files so that a crash never leaves half of one: atomic replacement,
fsynced appends, and one line (OutputFailed) when the disk is full or the folder gone.

rounds.csv, clients.csv and groups.csv (CsvRecorder), model.pt (ModelSaver) and config.json
(write_config_json) are written here; their names are fedsim.ground.files'.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import IO, Any

import torch
from flwr.app import ArrayRecord

from fedsim.ground.config import RunConfig
from fedsim.ground.errors import ConfigError, OutputFailed
from fedsim.ground.files import temporary
from fedsim.outputs.callbacks import RoundCallback
from fedsim.outputs.records import (
    CSV_COLUMNS,
    GROUP_COLUMNS,
    RoundRecord,
    Timings,
    client_columns,
    round_columns,
)


def atomic_write(path: Path, write: Callable[[IO], Any], text: bool = False) -> None:
    """Write to a temporary file, fsync, then rename over `path`: readers (and a crash)
    see the old file or the new one, never half of one. A write that fails (a full
    disk, the folder removed) leaves no temporary file and raises OutputFailed."""
    tmp = path.with_name(temporary(path.name))
    try:
        with open(tmp, "w" if text else "wb", newline="" if text else None) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except Exception as error:
        with contextlib.suppress(OSError):
            tmp.unlink()
        # torch.save reports a full disk as a RuntimeError raised while handling it
        cause = error if isinstance(error, OSError) else error.__context__
        if isinstance(cause, OSError):
            raise unwritable(path, cause) from None
        raise


def check_writable(option: str, folder: Path) -> None:
    """The nearest existing folder on the way to `folder` must be a writable folder
    (checked before a run writes anything, so bad input leaves nothing behind)."""
    existing = folder.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(option, f"{folder} cannot be written (check {existing})")


def unwritable(path: Path, error: OSError) -> OutputFailed:
    """Why a result file could not be written, in one line."""
    if not path.parent.is_dir():
        return OutputFailed(f"{path.parent} was removed while the run was going")
    return OutputFailed(f"cannot write {path}: {error.strerror or error}")


class _CsvFile:
    """A CSV file open for appending: a header when new, rows flushed and fsynced."""

    def __init__(self, path: Path, columns: Sequence[str]) -> None:
        self.path = path
        fresh = not path.exists() or path.stat().st_size == 0
        self._file = open(path, "a", newline="")  # noqa: SIM115 - open for the run
        self._writer = csv.writer(self._file)
        if fresh:
            self.write([list(columns)])

    def write(self, rows: list[list[str]]) -> None:
        try:
            self._writer.writerows(rows)
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as error:
            raise unwritable(self.path, error) from None

    def close(self) -> None:
        self._file.close()


class CsvRecorder(RoundCallback):
    """rounds.csv and clients.csv: a row per round, and a row per client and phase of
    the round, both on disk (fsynced) before the next round starts; clients.csv (and
    groups.csv, made when a round first has group rows) first, so a round in
    rounds.csv always has its other rows."""

    def __init__(
        self,
        rounds_path: Path,
        clients_path: Path,
        timings: Timings | None = None,
        groups_path: Path | None = None,
        personal: bool = False,
    ) -> None:
        self._client_columns, self._round_columns = (
            client_columns(personal),
            round_columns(personal),
        )
        self._clients = _CsvFile(clients_path, self._client_columns)
        self._rounds = _CsvFile(rounds_path, self._round_columns)
        self._timings = timings or Timings()
        self._groups_path, self._groups = groups_path, None

    def on_round_end(self, record: RoundRecord, arrays: ArrayRecord) -> None:
        tick = time.perf_counter()
        self._clients.write([client.row(self._client_columns) for client in record.clients])
        if record.groups and self._groups_path is not None:
            self._groups = self._groups or _CsvFile(self._groups_path, GROUP_COLUMNS)
            self._groups.write([group.row() for group in record.groups])
        self._rounds.write([record.row(self._round_columns)])
        self._timings.recording += time.perf_counter() - tick

    def on_run_end(self, arrays: ArrayRecord) -> None:
        self._clients.close()
        self._rounds.close()
        if self._groups is not None:
            self._groups.close()


class ModelSaver(RoundCallback):
    """model.pt: the final global model's state dict, written atomically at the end."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_run_end(self, arrays: ArrayRecord) -> None:
        atomic_write(self.path, lambda handle: torch.save(arrays.to_torch_state_dict(), handle))


@functools.cache
def _versions() -> dict[str, str]:
    names = ("flwr", "flwr-datasets", "ray", "torch", "torchvision", "numpy", "pandas")
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "missing"
    return {"python": platform.python_version(), **found}


@functools.cache
def _hardware() -> dict[str, Any]:
    return {
        "machine": platform.machine(),
        "system": platform.platform(),
        "cpus": os.cpu_count(),
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
    }


def write_config_json(
    path: Path,
    cfg: RunConfig,
    timings: Timings,
    status: str,
    extra: dict[str, Any],
    columns: Sequence[str] = CSV_COLUMNS,
) -> None:
    """The resolved config, versions, hardware and the timing breakdown, atomically."""
    document = {
        "status": status,
        "config": cfg.as_dict(),
        "csv_columns": list(columns),  # rounds.csv's
        "versions": _versions(),
        "hardware": _hardware(),
        "timings_seconds": {
            k: round(v, 3) if isinstance(v, float) else [round(x, 3) for x in v]
            for k, v in asdict(timings).items()
        },
        **extra,
    }
    atomic_write(path, lambda handle: handle.write(json.dumps(document, indent=2) + "\n"), True)


def truncate_rows(csv_path: Path, last_round: int, columns: Sequence[str]) -> None:
    """Keep the header and the rows of rounds up to `last_round`: rows written before a
    crash cut the checkpoint short go, and so do lines that are not rows at all (a
    torn or foreign line), which would otherwise break every later read. A file written
    before fedsim appended columns gets them, empty in its old rows, so that the rows
    the resumed run adds line up."""
    if not csv_path.exists():
        return
    with open(csv_path, newline="", errors="replace") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        return
    header = rows[0]
    if list(columns[: len(header)]) != header:
        raise ConfigError(
            "--resume", f"{csv_path} has the columns {header}, not fedsim's {list(columns)}"
        )

    def kept(row: list[str]) -> bool:
        try:
            return len(row) == len(header) and int(row[0]) <= last_round
        except ValueError:
            return False

    padding = [""] * (len(columns) - len(header))
    rows = [list(columns)] + [row + padding for row in rows[1:] if kept(row)]
    atomic_write(csv_path, lambda handle: csv.writer(handle).writerows(rows), text=True)
