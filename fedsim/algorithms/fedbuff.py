"""FedBuff (Nguyen et al., AISTATS 2022): buffered asynchronous aggregation.

Clients train with plain local SGD and send their update Δ = (the model they started
from) − (the model they ended with). The server buffers updates as they arrive on the
simulated clock (fedsim.simulation.buffered runs that schedule) and, once K are in, applies

    w ← w − η · (1/K) · Σᵢ s(τᵢ) · Δᵢ,    s(τ) = 1/√(1 + τ),

where τᵢ is update i's staleness (server updates applied while its client trained) and
s is the paper's polynomial staleness scaling with exponent ½, as FedScale's FedBuff
aggregator writes it (FLSim, the authors' code, also divides by s(1); fedsim does not).
Updates are not weighted by example counts, as in the paper. η is --server-lr, default 1:
with fresh updates (τ = 0) the new model is then the plain mean of the clients' models.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp import strategy as strategies

from fedsim.algorithms.base import SAMPLE_ALL, SERVER_LR, Algorithm, Buffered
from fedsim.algorithms.context import ClientContext
from fedsim.ground import insides, messages
from fedsim.ground.option import Option, at_least

if TYPE_CHECKING:
    from torch import nn

DEFAULT_SERVER_LR = 1.0


def staleness_weight(staleness: int) -> float:
    return 1.0 / math.sqrt(1.0 + staleness)


def buffered_update(
    current: dict[str, np.ndarray],
    deltas: list[dict[str, np.ndarray]],
    staleness: list[int],
    server_lr: float,
) -> dict[str, np.ndarray]:
    """The model after one FedBuff server update, each array in its own dtype."""
    scale = server_lr / len(deltas)
    return {
        name: (
            value
            - scale
            * sum(
                staleness_weight(t) * delta[name]
                for delta, t in zip(deltas, staleness, strict=True)
            )
        ).astype(value.dtype)
        for name, value in current.items()
    }


class FedBuffStrategy(strategies.FedAvg):
    """Flower's FedAvg with FedBuff's server update. The model the updates apply to is
    the strategy's own (as in Flower's FedAvgM): the first one it sends, then each one
    it makes; checkpoint.pt keeps it with the strategy's state (fedsim.runner.server_state)."""

    def __init__(self, server_lr: float = DEFAULT_SERVER_LR) -> None:
        super().__init__(**SAMPLE_ALL)
        self.server_lr = server_lr
        self.current_arrays: ArrayRecord | None = None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if self.current_arrays is None:
            self.current_arrays = arrays
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid = insides.valid_replies(self, list(replies), is_train=True)
        if not valid or self.current_arrays is None:
            return None, None
        contents = [reply.content for reply in valid]
        updated = buffered_update(
            {name: array.numpy() for name, array in self.current_arrays.items()},
            [
                {
                    name: array.numpy()
                    for name, array in next(iter(c.array_records.values())).items()
                }
                for c in contents
            ],
            [int(c[messages.STALENESS][messages.STALENESS]) for c in contents],
            self.server_lr,
        )
        self.current_arrays = ArrayRecord({name: Array(v) for name, v in updated.items()})
        return self.current_arrays, self.train_metrics_aggr_fn(contents, self.weighted_by_key)


class FedBuff(Algorithm):
    source = "Nguyen et al., AISTATS 2022"
    asynchronous = True
    not_with_dp = (
        "its updates arrive one by one on the simulated clock, not as rounds of sampled "
        "clients, so the accountant's sampling model does not describe them"
    )
    buffer_size = Option(
        10, "client updates the server waits for before each update (K)", at_least(1)
    )
    concurrency = Option(20, "clients training at once in simulated time (C)", at_least(1))
    server_lr = SERVER_LR

    def buffered(self) -> Buffered:
        return Buffered(size=self.buffer_size, concurrency=self.concurrency)

    def strategy(self) -> FedBuffStrategy:
        lr = self.server_lr
        return FedBuffStrategy(DEFAULT_SERVER_LR if lr is None else lr)

    def update(self, ctx: ClientContext, model: nn.Module) -> ArrayRecord:
        """Δ = the model it was sent − the model it trained."""
        start = ctx.content[messages.ARRAYS].to_torch_state_dict()
        return ArrayRecord(
            {name: start[name] - value for name, value in model.state_dict().items()}
        )
