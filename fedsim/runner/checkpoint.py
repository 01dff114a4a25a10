"""Crash safety: after every round, the state needed to go on from it, written atomically.

A checkpoint holds the global model, the round it ends, the strategy object itself
(FedAvgM's momentum, FedAdam's moments live there), the simulated clock (its time, and
FedBuff's clients in flight) and the driver's RNG states. The clients' memories are the
incremental part: the loop commits a round's changed ones to client_states.sqlite
before the checkpoint is written, and the versions they replace go once it is
(fedsim.simulation.client_states), so a checkpoint costs what the round changed. With
rounds.csv and clients.csv fsynced first, a run killed at any moment can be resumed
from its last complete round and finish with the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord

from fedsim.ground.errors import ConfigError
from fedsim.ground.files import CHECKPOINT, CLIENT_STATES
from fedsim.outputs.callbacks import RoundCallback
from fedsim.outputs.files import atomic_write
from fedsim.outputs.records import RoundRecord
from fedsim.simulation.client_states import REMOVE, ClientStates
from fedsim.simulation.clock import ClockState
from fedsim.simulation.state import RunState


class Checkpointer(RoundCallback):
    """Writes the checkpoint at the end of every round (round 0 included): the run's
    state as the loop leaves it, and the driver's RNG states; then lets the clients'
    store drop what the round replaced. Once the run is complete the store goes if
    --client-states says so."""

    def __init__(self, run_dir: Path, state: RunState, client_states: str) -> None:
        self.path, self.state, self.client_states = run_dir / CHECKPOINT, state, client_states

    def on_round_end(self, record: RoundRecord, arrays: ArrayRecord) -> None:
        saved = {
            "round": record.round,
            "model": arrays.to_torch_state_dict(),
            "strategy": pickle.dumps(self.state.strategy),
            "client_states": self.state.states.on_disk(),  # a resume needs the file
            "clock": self.state.clock.to_dict(),
            "rng": {
                "python": random.getstate(),
                "numpy": np.random.get_state(),
                "torch": torch.get_rng_state(),
            },
        }
        atomic_write(self.path, lambda handle: torch.save(saved, handle))
        self.state.states.prune(record.round)

    def on_run_end(self, arrays: ArrayRecord) -> None:
        if self.client_states == REMOVE:
            self.state.states.remove()
        else:
            self.state.states.close()


def load_checkpoint(run_dir: Path) -> RunState:
    """Read a run's checkpoint back, with its clients' memories as of its round, and put
    the driver's RNGs where they were. One that does not read back whole (truncated,
    empty, not fedsim's) or whose clients' memories are gone is a ConfigError on
    --resume."""
    path, store = run_dir / CHECKPOINT, run_dir / CLIENT_STATES
    try:
        saved = torch.load(path, weights_only=False)
        completed = int(saved["round"])
        state = RunState(
            arrays=ArrayRecord(saved["model"]),
            strategy=pickle.loads(saved["strategy"]),
            clock=ClockState.from_dict(saved.get("clock", {})),
            completed=completed,
        )
        rng, had_states = saved["rng"], saved["client_states"]
        if not isinstance(had_states, bool):  # fedsim before client_states.sqlite
            raise ValueError("an older fedsim's checkpoint, with the clients' memories inside")
    except Exception as error:  # torch.load raises many kinds on a damaged file
        raise ConfigError(
            "--resume",
            f"{path} cannot be read ({type(error).__name__}: {error}); the run cannot go on "
            "from it, start it again",
        ) from None
    if had_states and not store.exists():
        raise ConfigError(
            "--resume",
            f"{store} is gone (--client-states {REMOVE} deletes it once a run is complete): "
            "the run cannot train further without its clients' memories",
        )
    state.states = ClientStates(store, completed)
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    return state
