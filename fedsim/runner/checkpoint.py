"""Crash safety: after every round, the state needed to go on from it, written atomically.

A checkpoint holds the global model, the round it ends, the server's state (FedAvgM's
momentum, FedAdam's moments: fedsim.runner.server_state, tensors and plain values, no
pickled object, so that it loads with `torch.load(weights_only=True)` and outlives a
Flower upgrade), the simulated clock (its time, and FedBuff's clients in flight) and
the driver's RNG states. The clients' memories are the
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
from flwr.serverapp.strategy import Strategy

from fedsim.algorithms import privacy
from fedsim.ground.errors import ConfigError
from fedsim.ground.files import CHECKPOINT, CLIENT_STATES
from fedsim.outputs.callbacks import RoundCallback
from fedsim.outputs.files import atomic_write
from fedsim.outputs.records import RoundRecord
from fedsim.runner import server_state
from fedsim.simulation.client_states import REMOVE, ClientStates, Manifest, StoreMismatch
from fedsim.simulation.clock import ClockState
from fedsim.simulation.state import RunState

FORMAT = 2  # checkpoint.pt's layout; 1 (no "format" key) pickled the strategy itself


class Checkpointer(RoundCallback):
    """Writes the checkpoint at the end of every round (round 0 included): the run's
    state as the loop leaves it, and the driver's RNG states; then lets the clients'
    store drop what the round replaced. Once the run is complete the store goes if
    --client-states says so."""

    def __init__(self, run_dir: Path, state: RunState, client_states: str) -> None:
        self.path, self.state, self.client_states = run_dir / CHECKPOINT, state, client_states

    def on_round_end(self, record: RoundRecord, arrays: ArrayRecord) -> None:
        saved = {
            "format": FORMAT,
            "round": record.round,
            "model": arrays.to_torch_state_dict(),
            "strategy_kind": privacy.kind(self.state.strategy),
            "strategy": server_state.state_of(self.state.strategy),
            "client_states": self.state.memories.on_disk(),  # a resume needs the file
            "client_memories": self.state.memories.manifest(),  # ... holding exactly these
            "clock": self.state.clock.to_dict(),
            "rng": rng_states(),
        }
        atomic_write(self.path, lambda handle: torch.save(saved, handle))
        self.state.memories.prune(record.round)

    def on_run_end(self, arrays: ArrayRecord) -> None:
        if self.client_states == REMOVE:
            self.state.memories.remove()
        else:
            self.state.memories.close()


def rng_states() -> dict[str, Any]:
    """The driver's random generators, as plain values and tensors."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    numpy_state = {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64))}
    numpy_state |= {"position": position, "has_gauss": has_gauss, "gauss": gauss}
    return {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}


def set_rng_states(rng: dict[str, Any]) -> None:
    random.setstate(rng["python"])
    numpy_state = rng["numpy"]
    if isinstance(numpy_state, dict):
        keys = numpy_state["keys"].numpy().astype(np.uint32)
        numpy_state = (numpy_state["kind"], keys, numpy_state["position"],
                       numpy_state["has_gauss"], numpy_state["gauss"])  # fmt: skip
    np.random.set_state(numpy_state)
    torch.set_rng_state(rng["torch"])


@dataclass(frozen=True)
class Saved:
    """What a checkpoint holds beyond the run's state: the driver's RNG states, and the
    clients' memories the store must hold (None: a checkpoint from before manifests)."""

    rng: dict[str, Any]
    had_states: bool
    memories: Manifest | None


def load_checkpoint(run_dir: Path, fresh: Strategy, expected: str) -> tuple[RunState, Saved]:
    """Read a run's checkpoint back, without its clients' memories yet (`open_memories`
    adds them). Its server state goes into `fresh`, the strategy the run's config
    builds, which must be the checkpoint's kind (`expected`, privacy.kind's: another
    one is another run's checkpoint). One that does not read back whole (truncated,
    empty, not fedsim's) is a ConfigError on --resume. A checkpoint of fedsim's first
    format, which pickled the strategy itself, is read too."""
    path = run_dir / CHECKPOINT
    try:
        saved = _read(path)
        legacy = "format" not in saved
        strategy = pickle.loads(saved["strategy"]) if legacy else fresh
        found = privacy.kind(strategy) if legacy else saved["strategy_kind"]
    except Exception as error:  # torch.load raises many kinds on a damaged file
        raise _unreadable(path, error) from None
    if found != expected:
        raise ConfigError(
            "--resume",
            f"{path} holds a {found} strategy, but config.json's run uses {expected}: "
            "it is another run's checkpoint",
        )
    try:
        if not legacy:
            server_state.restore(strategy, saved["strategy"])
        state = RunState(
            arrays=ArrayRecord(saved["model"]),
            strategy=strategy,
            clock=ClockState.from_dict(saved.get("clock", {})),
            completed=int(saved["round"]),
        )
        had_states = saved["client_states"]
        if not isinstance(had_states, bool):  # fedsim before client_states.sqlite
            raise ValueError("an older fedsim's checkpoint, with the clients' memories inside")
        kept = Saved(saved["rng"], had_states, saved.get("client_memories"))
    except Exception as error:
        raise _unreadable(path, error) from None
    return state, kept


def _read(path: Path) -> dict[str, Any]:
    """checkpoint.pt as tensors and plain values; fedsim's first format (a pickled
    strategy, NumPy's RNG state) only needs, and gets, the full unpickler."""
    try:
        return torch.load(path, weights_only=True)
    except pickle.UnpicklingError:
        saved = torch.load(path, weights_only=False)
        if "format" in saved:  # the current format holds nothing the above refuses
            raise
        return saved


def _unreadable(path: Path, error: Exception) -> ConfigError:
    return ConfigError(
        "--resume",
        f"{path} cannot be read ({type(error).__name__}: {error}); the run cannot go on "
        "from it, start it again",
    )


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
        state.memories = ClientStates(store, state.completed, saved.memories)
    except StoreMismatch as mismatch:
        raise ConfigError(
            "--resume",
            f"{store} does not hold the clients' memories of round {state.completed}'s "
            f"checkpoint: {mismatch}. Its write-ahead log (-wal) may have been lost or "
            "damaged, or it is an older copy; the run cannot go on with other memories",
        ) from None
    set_rng_states(saved.rng)
