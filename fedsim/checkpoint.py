"""Crash safety: after every round, the state needed to go on from it, written atomically.

A checkpoint holds the global model, the round it ends, the strategy object itself
(FedAvgM's momentum, FedAdam's moments live there) and the driver's RNG states. With
rounds.csv fsynced first, a run killed at any moment can be resumed from its last
complete round and finish with the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import csv
import pickle
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord
from flwr.serverapp.strategy import Strategy

from fedsim.results import RoundRecord, atomic_write

CHECKPOINT = "checkpoint.pt"


@dataclass
class Checkpoint:
    round: int
    arrays: ArrayRecord
    strategy: Strategy


class Checkpointer:
    """Writes checkpoint.pt at the end of every round (round 0 included)."""

    def __init__(self, path: Path, strategy: Strategy) -> None:
        self.path = path
        self.strategy = strategy

    def on_round_end(self, record: RoundRecord, arrays: ArrayRecord) -> None:
        state = {
            "round": record.round,
            "model": arrays.to_torch_state_dict(),
            "strategy": pickle.dumps(self.strategy),
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
    """Read a checkpoint back and put the driver's RNGs where they were."""
    state = torch.load(path, weights_only=False)
    random.setstate(state["rng"]["python"])
    np.random.set_state(state["rng"]["numpy"])
    torch.set_rng_state(state["rng"]["torch"])
    return Checkpoint(
        round=int(state["round"]),
        arrays=ArrayRecord(state["model"]),
        strategy=pickle.loads(state["strategy"]),
    )


def truncate_rounds(csv_path: Path, last_round: int) -> None:
    """Drop rows after `last_round` (written before a crash cut the checkpoint short)."""
    if not csv_path.exists():
        return
    with open(csv_path, newline="") as handle:
        rows = list(csv.reader(handle))
    kept = rows[:1] + [row for row in rows[1:] if row and int(row[0]) <= last_round]
    atomic_write(csv_path, lambda handle: csv.writer(handle).writerows(kept), text=True)
