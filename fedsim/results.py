"""What a run leaves behind, each output a callback on round end (pfl-research's pattern).

The server loop calls `on_round_end(record, arrays)` and `on_run_end(arrays)` on every
callback and knows nothing about files; the writers know nothing about each other.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import IO, Any, Protocol

import torch
from flwr.app import ArrayRecord

from fedsim.config import RunConfig

CSV_COLUMNS = (
    "round",
    "train_loss",
    "eval_loss",
    "eval_accuracy",
    "central_loss",
    "central_accuracy",
    "clients_sampled",
    "clients_failed",
    "round_seconds",
)


@dataclass
class RoundRecord:
    """One row of rounds.csv; None is written as an empty cell."""

    round: int
    train_loss: float | None = None
    eval_loss: float | None = None
    eval_accuracy: float | None = None
    central_loss: float | None = None
    central_accuracy: float | None = None
    clients_sampled: int = 0
    clients_failed: int = 0
    round_seconds: float = 0.0

    def row(self) -> list[str]:
        return [
            "" if v is None else (f"{v:.8g}" if isinstance(v, float) else str(v))
            for v in (getattr(self, c) for c in CSV_COLUMNS)
        ]


@dataclass
class Timings:
    """Where the time went, in seconds; ends up in config.json."""

    imports: float = 0.0
    data_load: float = 0.0
    partition: float = 0.0
    ray_start: float = 0.0
    train: float = 0.0
    client_evaluate: float = 0.0
    aggregate: float = 0.0
    central_evaluate: float = 0.0
    rounds: float = 0.0
    total: float = 0.0
    per_round: list[float] = field(default_factory=list)


def atomic_write(path: Path, write: Callable[[IO], Any], text: bool = False) -> None:
    """Write to a temporary file, fsync, then rename over `path`: readers (and a crash)
    see the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w" if text else "wb", newline="" if text else None) as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


class RoundCallback(Protocol):
    def on_round_end(self, record: RoundRecord, arrays: ArrayRecord) -> None: ...

    def on_run_end(self, arrays: ArrayRecord) -> None: ...


class CsvRecorder:
    """rounds.csv: a header, then one row per round, flushed and fsynced before moving on."""

    def __init__(self, path: Path) -> None:
        self.path = path
        fresh = not path.exists() or path.stat().st_size == 0
        self._file = open(path, "a", newline="")  # noqa: SIM115 - open for the run
        self._writer = csv.writer(self._file)
        if fresh:
            self._write(list(CSV_COLUMNS))

    def _write(self, row: list[str]) -> None:
        self._writer.writerow(row)
        self._file.flush()
        os.fsync(self._file.fileno())

    def on_round_end(self, record: RoundRecord, arrays: ArrayRecord) -> None:
        self._write(record.row())

    def on_run_end(self, arrays: ArrayRecord) -> None:
        self._file.close()


class ProgressPrinter:
    """One console line per round."""

    def __init__(self, rounds: int, stream: Any = sys.stdout) -> None:
        self.rounds = rounds
        self.stream = stream

    def on_round_end(self, record: RoundRecord, arrays: ArrayRecord) -> None:
        parts = [f"round {record.round:>{len(str(self.rounds))}}/{self.rounds}"]
        for name in ("train_loss", "eval_accuracy", "central_loss", "central_accuracy"):
            value = getattr(record, name)
            if value is not None and not math.isnan(value):
                parts.append(f"{name} {value:.4f}")
        if record.round:
            parts.append(
                f"clients {record.clients_sampled - record.clients_failed}/{record.clients_sampled}"
            )
            parts.append(f"{record.round_seconds:.1f} s")
        print("  ".join(parts), file=self.stream, flush=True)

    def on_run_end(self, arrays: ArrayRecord) -> None:
        pass


class ModelSaver:
    """model.pt: the final global model's state dict, written atomically at the end."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_round_end(self, record: RoundRecord, arrays: ArrayRecord) -> None:
        pass

    def on_run_end(self, arrays: ArrayRecord) -> None:
        atomic_write(self.path, lambda handle: torch.save(arrays.to_torch_state_dict(), handle))


def run_name(cfg: RunConfig, now: float | None = None) -> str:
    """`--name`, else time and the settings that tell runs apart."""
    if cfg.name:
        return cfg.name
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    partition = cfg.partition + (f"{cfg.alpha:g}" if cfg.partition == "dirichlet" else "")
    return f"{stamp}-{cfg.strategy}-{cfg.clients}c-{partition}-r{cfg.rounds}-s{cfg.seed}"


def _versions() -> dict[str, str]:
    names = ("flwr", "flwr-datasets", "ray", "torch", "torchvision", "numpy", "pandas")
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "missing"
    return {"python": platform.python_version(), **found}


def _hardware() -> dict[str, Any]:
    return {
        "machine": platform.machine(),
        "system": platform.platform(),
        "cpus": os.cpu_count(),
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
    }


def write_config_json(
    path: Path, cfg: RunConfig, timings: Timings, status: str, extra: dict[str, Any]
) -> None:
    """The resolved config, versions, hardware and the timing breakdown, atomically."""
    document = {
        "status": status,
        "config": cfg.as_dict(),
        "csv_columns": list(CSV_COLUMNS),
        "versions": _versions(),
        "hardware": _hardware(),
        "timings_seconds": {
            k: round(v, 3) if isinstance(v, float) else [round(x, 3) for x in v]
            for k, v in asdict(timings).items()
        },
        **extra,
    }
    atomic_write(path, lambda handle: handle.write(json.dumps(document, indent=2) + "\n"), True)
