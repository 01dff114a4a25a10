"""The rows a run writes: RoundRecord (rounds.csv), ClientRecord (clients.csv) and
GroupRecord (groups.csv), with their columns, and Timings (where the time went, for
config.json).

docs/results.md defines every column.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedsim.ground import messages

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

GROUP_COLUMNS = ("round", "group", "examples", "loss", "accuracy")
# Appended where the algorithm is personal (fedsim.algorithms.personal): each evaluated
# client's personalised model on its own held-out examples, and the round's view of them
PERSONAL_CLIENT_COLUMNS = ("personal_loss", "personal_accuracy")
PERSONAL_ROUND_COLUMNS = (
    "personal_loss",
    "personal_accuracy",
    "personal_accuracy_p10",
    "personal_accuracy_std",
    "unseen_loss",  # the held-out clients' (--holdout-clients), adapted as new clients
    "unseen_accuracy",
)


def round_columns(personal: bool) -> tuple[str, ...]:
    """rounds.csv's columns."""
    return CSV_COLUMNS + PERSONAL_ROUND_COLUMNS if personal else CSV_COLUMNS


def client_columns(personal: bool) -> tuple[str, ...]:
    """clients.csv's columns."""
    return CLIENT_COLUMNS + PERSONAL_CLIENT_COLUMNS if personal else CLIENT_COLUMNS


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
    status: str  # ok, failed, timeout, dropout or straggler (fedsim.ground.messages)
    seconds: float  # the client's own compute time, measured where it ran
    bytes_down: int  # serialized size of what the server sent it
    bytes_up: int  # serialized size of its reply
    error: str = ""  # why it failed (console and config.json, not the CSV)
    sim_seconds: float | None = (
        None  # its training on the simulated clock (fedsim.simulation.clock)
    )
    personal_loss: float | None = None  # its personalised model's (evaluate, personal)
    personal_accuracy: float | None = None

    def row(self, columns: tuple[str, ...] = CLIENT_COLUMNS) -> list[str]:
        return _cells(getattr(self, c) for c in columns)


@dataclass(frozen=True)
class GroupRecord:
    """One row of groups.csv: the global model on one group's test examples (a
    centre's), from the central evaluation of data that names groups."""

    round: int
    group: str
    examples: int
    loss: float
    accuracy: float

    def row(self) -> list[str]:
        return _cells(getattr(self, c) for c in GROUP_COLUMNS)


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
    groups: list[GroupRecord] = field(default_factory=list)  # data with groups only

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

    def _accuracies(self, name: str) -> np.ndarray:
        values = [getattr(c, name) for c in self._of("evaluate")]
        return np.array([v for v in values if v is not None], dtype=float)

    def _p10(self, name: str) -> float | None:
        """The 10th percentile of the evaluated clients' `name` (who is served worst)."""
        accuracies = self._accuracies(name)
        return float(np.percentile(accuracies, 10)) if len(accuracies) else None

    def _std(self, name: str) -> float | None:
        """Their standard deviation (population, ddof 0)."""
        accuracies = self._accuracies(name)
        return float(accuracies.std()) if len(accuracies) else None

    @property
    def eval_accuracy_p10(self) -> float | None:
        return self._p10("accuracy")

    @property
    def eval_accuracy_std(self) -> float | None:
        return self._std("accuracy")

    def _weighted(self, phase: str, name: str) -> float | None:
        """The example-weighted mean of a personal metric over a phase's clients."""
        judged = [c for c in self._of(phase) if c.personal_accuracy is not None]
        examples = sum(c.examples for c in judged)
        if not examples:
            return None
        return sum(c.examples * getattr(c, name) for c in judged) / examples

    @property
    def personal_loss(self) -> float | None:
        return self._weighted("evaluate", "personal_loss")

    @property
    def personal_accuracy(self) -> float | None:
        return self._weighted("evaluate", "personal_accuracy")

    @property
    def unseen_loss(self) -> float | None:
        return self._weighted(messages.UNSEEN, "personal_loss")

    @property
    def unseen_accuracy(self) -> float | None:
        return self._weighted(messages.UNSEEN, "personal_accuracy")

    @property
    def personal_accuracy_p10(self) -> float | None:
        return self._p10("personal_accuracy")

    @property
    def personal_accuracy_std(self) -> float | None:
        return self._std("personal_accuracy")

    def row(self, columns: tuple[str, ...] = CSV_COLUMNS) -> list[str]:
        return _cells(getattr(self, c) for c in columns)


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
