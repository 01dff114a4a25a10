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

from typing import TYPE_CHECKING

import numpy as np
from flwr.app import Array, ArrayRecord, RecordDict

from fedsim.algorithms.base import SAMPLE_ALL, Algorithm, FromTheSentModel
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


class FedNovaStrategy(FromTheSentModel):
    """Flower's FedAvg sampling and checks, FedNova's aggregation."""

    def update(self, sent: ArrayRecord, contents: list[RecordDict]) -> ArrayRecord:
        metrics = [next(iter(content.metric_records.values())) for content in contents]
        sizes = [float(m[self.weighted_by_key]) for m in metrics]
        shares = [size / sum(sizes) for size in sizes]
        norms = [float(m[NORM]) for m in metrics]
        global_ = sent.to_numpy_ndarrays()
        step = [np.zeros(x.shape, dtype=np.result_type(x, np.float32)) for x in global_]
        for content, share, norm in zip(contents, shares, norms, strict=True):
            if not norm:  # no local step: nothing moved
                continue
            local = next(iter(content.array_records.values())).to_numpy_ndarrays()
            for total, x, y in zip(step, global_, local, strict=True):
                total += share * ((x - y) / norm)  # p_i d_i
        tau_eff = sum(share * norm for share, norm in zip(shares, norms, strict=True))
        return ArrayRecord(
            {
                key: Array(np.asarray(x - tau_eff * total).astype(x.dtype))
                for key, x, total in zip(sent.keys(), global_, step, strict=True)
            }
        )


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
