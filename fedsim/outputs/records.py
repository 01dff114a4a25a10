"""What a run leaves behind, each output a callback on round end (pfl-research's pattern).

The server loop calls `on_round_end(record, arrays)` and `on_run_end(arrays)` on every
callback and knows nothing about files; the writers know nothing about each other.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import platform
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import IO, Any, Protocol

import numpy as np
import torch
from flwr.app import ArrayRecord

from fedsim.ground import messages
from fedsim.ground.config import RunConfig
from fedsim.ground.errors import ConfigError, OutputFailed

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
    "bytes_down",
    "bytes_up",
    "eval_accuracy_p10",
    "eval_accuracy_std",
    "sim_round_seconds",
    "sim_clock",
    "stragglers",
    "dp_epsilon",
)
CLIENT_COLUMNS = (
    "round",
    "phase",
    "client",
    "examples",
    "loss",
    "accuracy",
    "status",
    "seconds",
    "bytes_down",
    "bytes_up",
    "sim_seconds",
)


def _cells(values: Iterable[Any]) -> list[str]:
    return ["" if v is None else (f"{v:.8g}" if isinstance(v, float) else str(v)) for v in values]


@dataclass
class ClientRecord:
    """One row of clients.csv: one client's part in one phase of one round."""

    round: int
    phase: str  # train or evaluate
    client: int  # partition id
    examples: int
    loss: float | None
    accuracy: float | None
    status: str  # ok, failed, timeout, dropout or straggler (fedsim.protocol)
    seconds: float  # the client's own compute time, measured where it ran
    bytes_down: int  # serialized size of what the server sent it
    bytes_up: int  # serialized size of its reply
    error: str = ""  # why it failed (console and config.json, not the CSV)
    sim_seconds: float | None = None  # its training on the simulated clock (fedsim.clock)

    def row(self) -> list[str]:
        return _cells(getattr(self, c) for c in CLIENT_COLUMNS)


@dataclass
class RoundRecord:
    """One row of rounds.csv (None is an empty cell), with its clients' rows."""

    round: int
    train_loss: float | None = None
    eval_loss: float | None = None
    eval_accuracy: float | None = None
    central_loss: float | None = None
    central_accuracy: float | None = None
    round_seconds: float = 0.0
    sim_round_seconds: float | None = None  # simulated seconds since the previous row
    sim_clock: float | None = None  # simulated seconds since the run began
    dp_epsilon: float | None = None  # privacy spent so far at --dp-delta (None: --dp off)
    clients: list[ClientRecord] = field(default_factory=list)

    def _of(self, phase: str) -> list[ClientRecord]:
        return [c for c in self.clients if c.phase == phase]

    @property
    def clients_sampled(self) -> int:
        return len(self._of("train"))

    @property
    def clients_failed(self) -> int:
        """Clients that raised, timed out or dropped out; not stragglers."""
        return sum(c.status in messages.FAILURES for c in self._of("train"))

    @property
    def stragglers(self) -> int:
        return sum(c.status == messages.STRAGGLER for c in self._of("train"))

    @property
    def clients_aggregated(self) -> int:
        return sum(c.status == messages.OK for c in self._of("train"))

    @property
    def bytes_down(self) -> int:
        return sum(c.bytes_down for c in self.clients)

    @property
    def bytes_up(self) -> int:
        return sum(c.bytes_up for c in self.clients)

    def _accuracies(self) -> np.ndarray:
        return np.array(
            [c.accuracy for c in self._of("evaluate") if c.accuracy is not None], dtype=float
        )

    @property
    def eval_accuracy_p10(self) -> float | None:
        accuracies = self._accuracies()
        return float(np.percentile(accuracies, 10)) if len(accuracies) else None

    @property
    def eval_accuracy_std(self) -> float | None:
        accuracies = self._accuracies()
        return float(accuracies.std()) if len(accuracies) else None

    def row(self) -> list[str]:
        return _cells(getattr(self, c) for c in CSV_COLUMNS)


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
    recording: float = 0.0  # the server's: measuring what it sends, client rows, the CSVs
    recording_in_clients: float = 0.0  # the clients': measuring their replies (summed)
    rounds: float = 0.0
    total: float = 0.0
    per_round: list[float] = field(default_factory=list)


def atomic_write(path: Path, write: Callable[[IO], Any], text: bool = False) -> None:
    """Write to a temporary file, fsync, then rename over `path`: readers (and a crash)
    see the old file or the new one, never half of one. A write that fails (a full
    disk, the folder removed) leaves no temporary file and raises OutputFailed."""
    tmp = path.with_name(f".{path.name}.tmp")
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


class RoundCallback(Protocol):
    def on_round_end(self, record: RoundRecord, arrays: ArrayRecord) -> None: ...

    def on_run_end(self, arrays: ArrayRecord) -> None: ...


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


class CsvRecorder:
    """rounds.csv and clients.csv: a row per round, and a row per client and phase of
    the round, both on disk (fsynced) before the next round starts; clients.csv first,
    so a round in rounds.csv always has its client rows."""

    def __init__(
        self, rounds_path: Path, clients_path: Path, timings: Timings | None = None
    ) -> None:
        self._clients = _CsvFile(clients_path, CLIENT_COLUMNS)
        self._rounds = _CsvFile(rounds_path, CSV_COLUMNS)
        self._timings = timings or Timings()

    def on_round_end(self, record: RoundRecord, arrays: ArrayRecord) -> None:
        tick = time.perf_counter()
        self._clients.write([client.row() for client in record.clients])
        self._rounds.write([record.row()])
        self._timings.recording += time.perf_counter() - tick

    def on_run_end(self, arrays: ArrayRecord) -> None:
        self._clients.close()
        self._rounds.close()


class FailureReporter:
    """Clients that failed or timed out, said on the console in the round they did
    (Flower drops such replies silently) and summed for config.json; dropouts that
    --client-failure-rate asked for and stragglers that --deadline or --over-select
    discarded are only counted. clients.csv has every one."""

    def __init__(self, stream: Any = sys.stderr) -> None:
        self.stream = stream
        self.counts: Counter[str] = Counter()
        self.errors: list[str] = []  # the first few distinct reasons

    def on_round_end(self, record: RoundRecord, arrays: ArrayRecord) -> None:
        bad = [c for c in record.clients if c.status != messages.OK]
        self.counts.update(c.status for c in bad)
        for client in bad:
            if client.error and client.error not in self.errors and len(self.errors) < 5:
                self.errors.append(client.error)
        unexpected = [c for c in bad if c.status in (messages.FAILED, messages.TIMEOUT)]
        if unexpected:
            kinds = Counter(f"{c.phase} {c.status}" for c in unexpected)
            said = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
            first = next((c for c in unexpected if c.error), unexpected[0])
            why = f"client {first.client}: {first.error}" if first.error else "no answer in time"
            print(
                f"fedsim: round {record.round}: {said} ({why}; clients.csv has each one)",
                file=self.stream,
                flush=True,
            )

    def on_run_end(self, arrays: ArrayRecord) -> None:
        pass

    def summary(self) -> dict[str, Any]:
        return {"client_outcomes": dict(self.counts), "client_errors": self.errors}


class ProgressPrinter:
    """One console line per round."""

    def __init__(self, rounds: int, stream: Any = sys.stdout) -> None:
        self.rounds = rounds
        self.stream = stream

    def on_round_end(self, record: RoundRecord, arrays: ArrayRecord) -> None:
        parts = [f"round {record.round:>{len(str(self.rounds))}}/{self.rounds}"]
        names = ("train_loss", "eval_accuracy", "central_loss", "central_accuracy", "dp_epsilon")
        for name in names:
            value = getattr(record, name)
            if value is not None and not math.isnan(value):
                parts.append(f"{name} {value:.4f}")
        if record.round:
            parts.append(f"clients {record.clients_aggregated}/{record.clients_sampled}")
            parts.append(f"{record.round_seconds:.1f} s")
            if record.sim_clock is not None:
                parts.append(f"sim {record.sim_clock / 3600:.2f} h")
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
