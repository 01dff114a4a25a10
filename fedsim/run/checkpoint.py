"""Crash safety: after every round, the state needed to go on from it, written atomically.

A checkpoint holds the global model, the round it ends, the strategy object itself
(FedAvgM's momentum, FedAdam's moments live there), the clients' memories, the
simulated clock (its time, and FedBuff's clients in flight) and the driver's RNG
states. With rounds.csv and clients.csv fsynced first, a run killed at any moment can
be resumed from its last complete round and finish with the same numbers as an
uninterrupted one.
"""

from __future__ import annotations

import csv
import pickle
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord
from flwr.serverapp.strategy import Strategy

from fedsim.ground.errors import ConfigError
from fedsim.outputs.records import RoundRecord, atomic_write
from fedsim.simulation.client_states import ClientStates
from fedsim.simulation.clock import ClockState

CHECKPOINT = "checkpoint.pt"


@dataclass
class Checkpoint:
    round: int
    arrays: ArrayRecord
    strategy: Strategy
    states: ClientStates
    clock: ClockState


class Checkpointer:
    """Writes checkpoint.pt at the end of every round (round 0 included)."""

    def __init__(
        self, path: Path, strategy: Strategy, states: ClientStates, clock: ClockState
    ) -> None:
        self.path = path
        self.strategy = strategy
        self.states = states
        self.clock = clock

    def on_round_end(self, record: RoundRecord, arrays: ArrayRecord) -> None:
        state = {
            "round": record.round,
            "model": arrays.to_torch_state_dict(),
            "strategy": pickle.dumps(self.strategy),
            "client_states": self.states.to_bytes(),
            "clock": self.clock.to_dict(),
            "rng": {
                "python": random.getstate(),
                "numpy": np.random.get_state(),
                "torch": torch.get_rng_state(),
            },
        }
        atomic_write(self.path, lambda handle: torch.save(state, handle))

    def on_run_end(self, arrays: ArrayRecord) -> None:
        pass


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint back and put the driver's RNGs where they were; one that does
    not read back whole (truncated, empty, not fedsim's) is a ConfigError on --resume."""
    try:
        state = torch.load(path, weights_only=False)
        checkpoint = Checkpoint(
            round=int(state["round"]),
            arrays=ArrayRecord(state["model"]),
            strategy=pickle.loads(state["strategy"]),
            states=ClientStates.from_bytes(state.get("client_states", {})),
            clock=ClockState.from_dict(state.get("clock", {})),
        )
        rng = state["rng"]
    except Exception as error:  # torch.load raises many kinds on a damaged file
        raise ConfigError(
            "--resume",
            f"{path} cannot be read ({type(error).__name__}: {error}); the run cannot go on "
            "from it, start it again",
        ) from None
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    return checkpoint


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
