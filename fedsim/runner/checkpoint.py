"""Crash safety: after every round, the state needed to go on from it, written atomically.

A checkpoint holds the global model, the round it ends, the strategy object itself
(FedAvgM's momentum, FedAdam's moments live there), the simulated clock (its time, and
FedBuff's clients in flight) and the driver's RNG states. The clients' memories are the
incremental part: the loop commits a round's changed ones to client_states.sqlite
before the checkpoint is written, and the versions they replace go once it is
(fedsim.simulation.client_states), so a checkpoint costs what the round changed; the
checkpoint names which memories the store holds (its manifest), so that a store which
lost writes or is another copy is refused, not trained on. With rounds.csv and
clients.csv fsynced first, a run killed at any moment can be resumed
from its last complete round and finish with the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import pickle
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord

from fedsim.ground.errors import ConfigError
from fedsim.ground.files import CHECKPOINT, CLIENT_STATES
from fedsim.outputs.callbacks import RoundCallback
from fedsim.outputs.files import atomic_write
from fedsim.outputs.records import RoundRecord
from fedsim.simulation.client_states import REMOVE, ClientStates, Manifest, StoreMismatch
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
            "client_memories": self.state.states.manifest(),  # ... holding exactly these
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


@dataclass(frozen=True)
class Saved:
    """What a checkpoint holds beyond the run's state: the driver's RNG states, and the
    clients' memories the store must hold (None: a checkpoint from before manifests)."""

    rng: dict[str, Any]
    had_states: bool
    memories: Manifest | None


def load_checkpoint(run_dir: Path) -> tuple[RunState, Saved]:
    """Read a run's checkpoint back, without its clients' memories yet (`open_memories`
    adds them once the checkpoint is known to be the run's own). One that does not
    read back whole (truncated, empty, not fedsim's) is a ConfigError on --resume."""
    path = run_dir / CHECKPOINT
    try:
        saved = torch.load(path, weights_only=False)
        state = RunState(
            arrays=ArrayRecord(saved["model"]),
            strategy=pickle.loads(saved["strategy"]),
            clock=ClockState.from_dict(saved.get("clock", {})),
            completed=int(saved["round"]),
        )
        had_states = saved["client_states"]
        if not isinstance(had_states, bool):  # fedsim before client_states.sqlite
            raise ValueError("an older fedsim's checkpoint, with the clients' memories inside")
        kept = Saved(saved["rng"], had_states, saved.get("client_memories"))
    except Exception as error:  # torch.load raises many kinds on a damaged file
        raise ConfigError(
            "--resume",
            f"{path} cannot be read ({type(error).__name__}: {error}); the run cannot go on "
            "from it, start it again",
        ) from None
    return state, kept


def open_memories(run_dir: Path, state: RunState, saved: Saved) -> None:
    """Give `state` (load_checkpoint's) its clients' memories as of its round, refusing
    a store that does not hold exactly what the checkpoint names (nothing in it is
    changed then), and put the driver's RNGs where they were."""
    store = run_dir / CLIENT_STATES
    if saved.had_states and not store.exists():
        raise ConfigError(
            "--resume",
            f"{store} is gone (--client-states {REMOVE} deletes it once a run is complete): "
            "the run cannot train further without its clients' memories",
        )
    try:
        state.states = ClientStates(store, state.completed, saved.memories)
    except StoreMismatch as mismatch:
        raise ConfigError(
            "--resume",
            f"{store} does not hold the clients' memories of round {state.completed}'s "
            f"checkpoint: {mismatch}. Its write-ahead log (-wal) may have been lost or "
            "damaged, or it is an older copy; the run cannot go on with other memories",
        ) from None
    random.setstate(saved.rng["python"])
    np.random.set_state(saved.rng["numpy"])
    torch.set_rng_state(saved.rng["torch"])
