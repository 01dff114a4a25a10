"""What one phase of a round leaves, in the loop's words: who the clients are, the
phase's result (every client's record, the replies the strategy aggregates, the new
memories), and what a round's records say of how a run ends (no update reached the
server; a loss that is not finite)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Message, RecordDict

from fedsim.ground import messages
from fedsim.ground.errors import Diverged, RunEnded
from fedsim.ground.messages import ClientOutcome
from fedsim.outputs.records import ClientRecord, RoundRecord
from fedsim.simulation.profiles import Profiles


@dataclass(frozen=True)
class Population:
    """Who the clients are: each one's training and held-out examples, and device."""

    train_sizes: np.ndarray
    val_sizes: np.ndarray
    profiles: Profiles


@dataclass
class PhaseResult:
    """One phase of a round: every client's record, the replies of the ones that
    succeeded (in partition order) as the strategy aggregates them, and training
    clients' new memories, kept by the caller once their updates are."""

    replies: list[Message] = field(default_factory=list)
    clients: list[ClientRecord] = field(default_factory=list)
    states: dict[int, RecordDict] = field(default_factory=dict)

    def by_client(self) -> dict[int, Message]:
        """The replies by partition id."""
        ok = [c.client for c in self.clients if c.status == messages.OK]
        return dict(zip(ok, self.replies, strict=True))

    def discard(self, pids: Collection[int]) -> None:
        """These clients' updates arrived too late: the strategy never sees them, their
        memories are not kept, and clients.csv calls them stragglers."""
        self.replies = [reply for pid, reply in self.by_client().items() if pid not in pids]
        for client in self.clients:
            if client.client in pids:
                client.status = messages.STRAGGLER
        for pid in pids:
            self.states.pop(pid, None)


# One training exchange of `pids`, as the seeds of round (or FedBuff draw) `server_round`
TrainPhase = Callable[[int, list[int]], PhaseResult]


class Measured:
    """Serialized sizes of what the strategy sends, measured once per distinct content
    (a FedAvg round sends every client the same RecordDict)."""

    def __init__(self) -> None:
        self._sizes: dict[int, tuple[RecordDict, int]] = {}

    def bytes(self, content: RecordDict) -> int:
        if id(content) not in self._sizes:
            self._sizes[id(content)] = (content, messages.recorddict_bytes(content))
        return self._sizes[id(content)][1]


def client_record(
    server_round: int, phase: str, pid: int, examples: int, outcome: ClientOutcome, down: int
) -> ClientRecord:
    metrics = {}
    if outcome.content is not None:
        metrics = next(iter(outcome.content.metric_records.values()), {})
    loss_key = messages.TRAIN_LOSS if phase == "train" else messages.EVAL_LOSS
    return ClientRecord(
        round=server_round,
        phase=phase,
        client=pid,
        examples=examples,
        loss=_float(metrics.get(loss_key)),
        accuracy=_float(metrics.get(messages.EVAL_ACCURACY)) if phase == "evaluate" else None,
        status=outcome.status,
        seconds=outcome.seconds,
        bytes_down=down,
        bytes_up=outcome.bytes_up,
        error=outcome.error,
        personal_loss=_float(metrics.get(messages.PERSONAL_LOSS)),
        personal_accuracy=_float(metrics.get(messages.PERSONAL_ACCURACY)),
    )


def _float(value) -> float | None:
    return None if value is None else float(value)


def metric(metrics, name: str) -> float | None:
    if metrics is None or name not in metrics:
        return None
    return float(metrics[name])


def no_updates(records: Sequence[RoundRecord], where: str, deadline: float | None) -> str:
    """Why no update reached the server in `records`, in clients.csv's words: "every
    sampled client failed" when they all failed, timed out or dropped out; else each
    status with its count (stragglers came after --deadline, or were over-selected)."""
    counts = Counter(c.status for r in records for c in r.clients if c.phase == "train")
    if set(counts) <= set(messages.FAILURES):
        return f"every sampled client failed in {where}"
    said = ", ".join(f"{status} for {n}" for status, n in sorted(counts.items()))
    hint = ""
    if counts[messages.STRAGGLER] and deadline is not None:
        hint = f"; --deadline {deadline:g} simulated seconds is shorter than their rounds"
    return f"no update reached the server in {where}: clients.csv says {said}{hint}"


def check_finite(record: RoundRecord) -> None:
    """A diverged model (NaN or infinite loss) cannot recover: stop at the first one.
    The simulated clock and the privacy spent are finite by the options' bounds; should
    one not be, the run says so rather than write it."""
    for name in ("train_loss", "eval_loss", "central_loss"):
        value = getattr(record, name)
        if value is not None and not math.isfinite(value):
            raise Diverged(
                f"the model diverged in round {record.round}: {name} is {value} "
                "(try a smaller --lr); the rounds before it are kept"
            )
    for name in ("sim_clock", "dp_epsilon"):
        value = getattr(record, name)
        if value is not None and not math.isfinite(value):
            raise RunEnded(f"{name} is {value} in round {record.round}: it cannot be computed")
