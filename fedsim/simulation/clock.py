"""The simulated clock: client profiles -> simulated seconds -> when a round ends.

Wall time says how fast this machine simulates; it says nothing about how long a
federation of phones would take. The simulated clock does: with each client's device
profile (fedsim.simulation.profiles), its training takes

    bytes_down · 8 / (down_mbps · 10⁶)  +  examples · epochs / examples_per_second
        +  bytes_up · 8 / (up_mbps · 10⁶)        simulated seconds

with the bytes as clients.csv measures them (the serialized messages). The clock is a
pure function of profiles, bytes and examples: it never reads wall time, so it is the
same on any machine, however the clients are bundled, and after --resume.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from flwr.app import RecordDict

from fedsim.ground import messages
from fedsim.ground.config import RunConfig
from fedsim.outputs.records import ClientRecord
from fedsim.simulation.profiles import ClientProfile, Profiles


def local_work(cfg: RunConfig, examples: int) -> int:
    """How many examples a client of `examples` trains on in a round: its epochs'
    worth, or --local-steps batches (whole epochs of them, then full batches), as
    fedsim.learning.training draws them: the clock's compute and a bundle's share."""
    if cfg.local_steps is None:
        return examples * cfg.local_epochs
    per_epoch = -(-examples // cfg.batch_size) if examples else 0
    if not per_epoch:
        return 0
    epochs, batches = divmod(cfg.local_steps, per_epoch)
    return epochs * examples + batches * cfg.batch_size


def client_sim_seconds(profile: ClientProfile, bytes_down: int, work: int, bytes_up: int) -> float:
    """Simulated seconds of one client's training: download, compute (`work`: the
    examples it trains on, local_work), upload."""
    return (
        bytes_down * 8 / (profile.down_mbps * 1e6)
        + work / profile.examples_per_second
        + bytes_up * 8 / (profile.up_mbps * 1e6)
    )


def time_clients(
    profiles: Profiles, records: Iterable[ClientRecord], cfg: RunConfig
) -> dict[int, float]:
    """Put each training record's simulated seconds on it; return those of the clients
    whose update arrives (status ok), by partition id."""
    finished = {}
    for record in records:
        record.sim_seconds = client_sim_seconds(
            profiles.of(record.client),
            record.bytes_down,
            local_work(cfg, record.examples),
            record.bytes_up,
        )
        if record.status == messages.OK:
            finished[record.client] = record.sim_seconds
    return finished


# ---- how a synchronous round ends ----------------------------------------------------------


def round_end(
    finish: Mapping[int, float], keep: int | None = None, deadline: float | None = None
) -> tuple[float, set[int]]:
    """When a synchronous round ends (simulated seconds after its start), and whose
    updates arrive too late (the stragglers). `finish` holds each arriving client's
    simulated seconds. The server keeps the first `keep` to finish (--over-select),
    none later than `deadline` (--deadline); the round ends as the last kept update
    arrives, or at the deadline if it cut anyone off; with neither it waits for all.
    Ties go to the lower partition id."""
    order = sorted(finish, key=lambda pid: (finish[pid], pid))
    kept = [pid for pid in order if deadline is None or finish[pid] <= deadline]
    if keep is not None:
        kept = kept[:keep]
    late = set(order) - set(kept)
    if keep is not None and len(kept) == keep:
        end = finish[kept[-1]]
    elif late and deadline is not None:
        end = deadline
    else:
        end = finish[order[-1]] if order else 0.0
    return end, late


# ---- the clock's state, checkpointed ------------------------------------------------------


@dataclass
class Flight:
    """A client training on the simulated clock (FedBuff): its work is done already
    (its model version was the one it started from); it arrives at `finish`."""

    pid: int
    version: int  # server updates applied when it started
    finish: float  # simulated time its update (or its failure) reaches the server
    record: ClientRecord
    content: RecordDict | None = None  # its reply, when it succeeded
    state: RecordDict | None = None  # its new memory, when it has one

    def to_dict(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "version": self.version,
            "finish": self.finish,
            "record": asdict(self.record),
            "content": None if self.content is None else messages.to_bytes(self.content),
            "state": None if self.state is None else messages.to_bytes(self.state),
        }

    @classmethod
    def from_dict(cls, stored: dict[str, Any]) -> Flight:
        content, state = stored["content"], stored["state"]
        return cls(
            pid=stored["pid"],
            version=stored["version"],
            finish=stored["finish"],
            record=ClientRecord(**stored["record"]),
            content=None if content is None else messages.from_bytes(content),
            state=None if state is None else messages.from_bytes(state),
        )


@dataclass
class ClockState:
    """Where the simulated clock stands after a round; checkpoint.pt holds it, so a
    resumed run goes on at the same simulated time with the same clients in flight."""

    now: float = 0.0  # simulated seconds since the run began
    draws: int = 0  # FedBuff: samplings of clients so far (each seeds the next)
    batches: int = 0  # FedBuff: training exchanges so far (each seeds its clients' work)
    in_flight: list[Flight] = field(default_factory=list)
    updated_rounds: int = 0  # rounds in which some client's update reached the server

    def to_dict(self) -> dict[str, Any]:
        return {
            "now": self.now,
            "draws": self.draws,
            "batches": self.batches,
            "in_flight": [flight.to_dict() for flight in self.in_flight],
            "updated_rounds": self.updated_rounds,
        }

    @classmethod
    def from_dict(cls, stored: dict[str, Any]) -> ClockState:
        return cls(
            now=stored.get("now", 0.0),
            draws=stored.get("draws", 0),
            batches=stored.get("batches", 0),
            in_flight=[Flight.from_dict(f) for f in stored.get("in_flight", [])],
            # a checkpoint from before this count cannot tell; it is not held against it
            updated_rounds=stored.get("updated_rounds", 1),
        )
