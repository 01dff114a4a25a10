"""FedNova (Wang et al., NeurIPS 2020): normalised averaging, so that clients taking more
local steps do not pull the model their way.

As NIID-Bench implements it (Li et al., ICDE 2022; its current code, which Flower's
baseline follows): a client that took tau momentum-SGD steps (momentum rho) reports
a_i = [tau - rho(1 - rho^tau)/(1 - rho)] / (1 - rho) (a_i = tau without momentum); the
server forms d_i = (x - y_i)/a_i and steps x <- x - (sum p_i a_i) · sum p_i d_i, with
p_i the clients' shares of the examples. NIID-Bench's client sends d_i; here it sends
its weights y_i and the server divides, the same arithmetic, so that the reply is a
model like every other algorithm's (attacks and Flower's DP wrappers act on it alike).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedsim.algorithms.base import SAMPLE_ALL, Algorithm
from fedsim.algorithms.context import ClientContext, ClientResult
from fedsim.ground import messages

if TYPE_CHECKING:
    from torch import nn

    from fedsim.learning.training import TrainResult

NORM = "fednova-a"  # a_i, the l1 norm of the client's momentum-SGD coefficients


def local_norm(steps: int, momentum: float) -> float:
    """a_i for `steps` momentum-SGD steps (NIID-Bench's formula; `steps` without momentum)."""
    if not momentum:
        return float(steps)
    return (steps - momentum * (1 - momentum**steps) / (1 - momentum)) / (1 - momentum)


class FedNovaStrategy(FedAvg):
    """Flower's FedAvg sampling and checks, FedNova's aggregation."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.current_arrays: ArrayRecord | None = None  # x, as QFedAvg keeps it

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.current_arrays = arrays
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid, _ = self._check_and_log_replies(replies, is_train=True)
        if not valid or self.current_arrays is None:
            return None, None
        contents = [reply.content for reply in valid]
        metrics = [next(iter(content.metric_records.values())) for content in contents]
        sizes = [float(m[self.weighted_by_key]) for m in metrics]
        shares = [size / sum(sizes) for size in sizes]
        norms = [float(m[NORM]) for m in metrics]
        global_ = self.current_arrays.to_numpy_ndarrays()
        step = [np.zeros(x.shape, dtype=np.result_type(x, np.float32)) for x in global_]
        for content, share, norm in zip(contents, shares, norms, strict=True):
            if not norm:  # no local step: nothing moved
                continue
            local = next(iter(content.array_records.values())).to_numpy_ndarrays()
            for total, x, y in zip(step, global_, local, strict=True):
                total += share * ((x - y) / norm)  # p_i d_i
        tau_eff = sum(share * norm for share, norm in zip(shares, norms, strict=True))
        arrays = ArrayRecord(
            {
                key: Array(np.asarray(x - tau_eff * total).astype(x.dtype))
                for key, x, total in zip(self.current_arrays.keys(), global_, step, strict=True)
            }
        )
        return arrays, self.train_metrics_aggr_fn(contents, self.weighted_by_key)


class FedNova(Algorithm):
    source = "Wang et al., NeurIPS 2020, as NIID-Bench runs it"

    def strategy(self) -> FedNovaStrategy:
        return FedNovaStrategy(**SAMPLE_ALL)

    def reply(
        self, ctx: ClientContext, model: nn.Module, result: TrainResult, examples: int
    ) -> ClientResult:
        reply = super().reply(ctx, model, result, examples)
        reply.content[messages.METRICS][NORM] = local_norm(result.steps, self.cfg.momentum)
        return reply
