"""Where a run stands after a round: what the next round starts from, and what a
checkpoint saves (fedsim.runner.checkpoint)."""

from __future__ import annotations

from dataclasses import dataclass, field

from flwr.app import ArrayRecord
from flwr.serverapp.strategy import Strategy

from fedsim.simulation.client_states import ClientStates
from fedsim.simulation.clock import ClockState


@dataclass
class RunState:
    """The global model, the strategy (whose own state, such as FedAvgM's momentum,
    lives in it), the clients' memories and the simulated clock; `completed` is the
    last round done (None: the run has not evaluated its initial model yet)."""

    arrays: ArrayRecord
    strategy: Strategy
    memories: ClientStates = field(default_factory=ClientStates)
    clock: ClockState = field(default_factory=ClockState)
    completed: int | None = None
