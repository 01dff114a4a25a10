"""Crash safety: after every round, the state needed to go on from it, written atomically.

A checkpoint holds the global model, the round it ends, the strategy object itself
(FedAvgM's momentum, FedAdam's moments live there), the clients' memories, the
simulated clock (its time, and FedBuff's clients in flight) and the driver's RNG
states. With rounds.csv and clients.csv fsynced first, a run killed at any moment can
be resumed from its last complete round and finish with the same numbers as an
uninterrupted one.
"""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord

from fedsim.ground.errors import ConfigError
from fedsim.outputs.callbacks import RoundCallback
from fedsim.outputs.files import atomic_write
from fedsim.outputs.records import RoundRecord
from fedsim.simulation.client_states import ClientStates
from fedsim.simulation.clock import ClockState
from fedsim.simulation.state import RunState


class Checkpointer(RoundCallback):
    """Writes the checkpoint at the end of every round (round 0 included): the run's
    state as the loop leaves it, and the driver's RNG states."""

    def __init__(self, path: Path, state: RunState) -> None:
        self.path, self.state = path, state

    def on_round_end(self, record: RoundRecord, arrays: ArrayRecord) -> None:
        saved = {
            "round": record.round,
            "model": arrays.to_torch_state_dict(),
            "strategy": pickle.dumps(self.state.strategy),
            "client_states": self.state.states.to_bytes(),
            "clock": self.state.clock.to_dict(),
            "rng": {
                "python": random.getstate(),
                "numpy": np.random.get_state(),
                "torch": torch.get_rng_state(),
            },
        }
        atomic_write(self.path, lambda handle: torch.save(saved, handle))


def load_checkpoint(path: Path) -> RunState:
    """Read a checkpoint back and put the driver's RNGs where they were; one that does
    not read back whole (truncated, empty, not fedsim's) is a ConfigError on --resume."""
    try:
        saved = torch.load(path, weights_only=False)
        state = RunState(
            arrays=ArrayRecord(saved["model"]),
            strategy=pickle.loads(saved["strategy"]),
            states=ClientStates.from_bytes(saved.get("client_states", {})),
            clock=ClockState.from_dict(saved.get("clock", {})),
            completed=int(saved["round"]),
        )
        rng = saved["rng"]
    except Exception as error:  # torch.load raises many kinds on a damaged file
        raise ConfigError(
            "--resume",
            f"{path} cannot be read ({type(error).__name__}: {error}); the run cannot go on "
            "from it, start it again",
        ) from None
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    return state
