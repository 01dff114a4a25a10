"""FedDyn (Acar et al., ICLR 2021, "Federated Learning Based on Dynamic Regularization"):
each client's objective moves with the server's, so that its local optimum agrees with
the global one however its data is skewed.

Client i, sent the global model θ, keeps g_i (the gradient of its loss at its last
local model; zero the first time) and minimises

    L_i(w) - <g_i, w> + α/2 · ||w - θ||²,

then updates g_i ← g_i - α (w_i - θ) and sends w_i. g_i is its memory (ClientResult
state, kept by the server between its rounds and in checkpoint.pt). The server keeps h
(zero at first) and, with N the number of clients and P the round's participants,

    h ← h - α/N · Σ_{i∈P} (w_i - θ),     θ ← (1/|P|) Σ_{i∈P} w_i - h/α,

the paper's Algorithm 1: the participants' plain mean (not weighted by examples),
corrected by h. The regulariser covers the model's trainable parameters; the state
dict's other entries (none in the CNN) are averaged. α is --feddyn-alpha (--alpha is
the Dirichlet concentration); the paper tries 0.1, 0.01 and 0.001.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from flwr.app import Array, ArrayRecord, RecordDict

from fedsim.algorithms.base import SAMPLE_ALL, Algorithm, FromTheSentModel
from fedsim.algorithms.context import ClientContext, ClientResult
from fedsim.ground import messages
from fedsim.ground.option import Option, greater_than

if TYPE_CHECKING:
    from torch import nn

    from fedsim.learning.training import LocalHooks, TrainResult

GRADIENT = "feddyn-gradient"  # g_i in the client's state


class FedDynStrategy(FromTheSentModel):
    """Flower's FedAvg sampling and checks, FedDyn's server update."""

    def __init__(self, clients: int, alpha: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.clients, self.alpha = clients, alpha
        self.correction: list[np.ndarray] | None = None  # h

    def update(self, sent: ArrayRecord, contents: list[RecordDict]) -> ArrayRecord:
        theta = sent.to_numpy_ndarrays()
        models = [next(iter(c.array_records.values())).to_numpy_ndarrays() for c in contents]
        if self.correction is None:
            self.correction = [np.zeros_like(x) for x in theta]
        updated = {}
        for index, (key, x) in enumerate(zip(sent.keys(), theta, strict=True)):
            drift = sum(model[index] - x for model in models)
            self.correction[index] = self.correction[index] - self.alpha / self.clients * drift
            mean = sum(model[index] for model in models) / len(models)
            value = mean - self.correction[index] / self.alpha
            updated[key] = Array(np.asarray(value).astype(x.dtype))
        return ArrayRecord(updated)


class FedDyn(Algorithm):
    source = "Acar et al., ICLR 2021"
    not_with_dp = (
        "its server keeps a correction built from the clients' un-noised updates, which "
        "later rounds release: the accountant does not describe it"
    )
    feddyn_alpha = Option(0.01, "FedDyn's regularisation weight α", greater_than(0))

    def strategy(self) -> FedDynStrategy:
        return FedDynStrategy(self.cfg.clients, self.feddyn_alpha, **SAMPLE_ALL)

    def _gradient(self, ctx: ClientContext, model: nn.Module) -> list:
        """g_i, a tensor per trainable parameter (zeros the first time)."""
        if GRADIENT not in ctx.state:
            return [p.detach().new_zeros(p.shape) for p in model.parameters()]
        device = next(model.parameters()).device
        return [g.to(device) for g in ctx.state[GRADIENT].to_torch_state_dict().values()]

    def hooks(self, ctx: ClientContext, model: nn.Module) -> LocalHooks:
        """α/2 · ||w - θ||² - <g_i, w>, as data: a proximal and a linear term."""
        from fedsim.learning.training import LocalHooks

        anchor = [p.detach().clone() for p in model.parameters()]
        return LocalHooks(proximal=(self.feddyn_alpha, anchor), linear=self._gradient(ctx, model))

    def reply(
        self, ctx: ClientContext, model: nn.Module, result: TrainResult, examples: int
    ) -> ClientResult:
        start = ctx.content[messages.ARRAYS].to_torch_state_dict()
        named = dict(model.named_parameters())
        gradient = self._gradient(ctx, model)
        updated = {
            name: (g - self.feddyn_alpha * (p.detach() - start[name].to(p.device)))
            for (name, p), g in zip(named.items(), gradient, strict=True)
        }
        reply = super().reply(ctx, model, result, examples)
        return ClientResult(reply.content, RecordDict({GRADIENT: ArrayRecord(updated)}))
