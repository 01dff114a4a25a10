"""FedProx (Li et al., MLSys 2020): FedAvg whose clients add mu/2 · ||w - w_global||²
to their loss. Flower's FedProx sends mu in each client's config."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flwr.serverapp import strategy as strategies

from fedsim.algorithms.base import SAMPLE_ALL, Algorithm
from fedsim.algorithms.context import ClientContext
from fedsim.ground import messages
from fedsim.ground.option import Option, at_least

if TYPE_CHECKING:
    from torch import nn

    from fedsim.learning.training import LocalHooks


class FedProx(Algorithm):
    source = "Li et al., MLSys 2020"
    proximal_mu = Option(0.0, "weight of the proximal term mu/2 · ||w - w_global||²", at_least(0))

    def strategy(self) -> strategies.Strategy:
        return strategies.FedProx(**SAMPLE_ALL, proximal_mu=self.proximal_mu)

    def hooks(self, ctx: ClientContext, model: nn.Module) -> LocalHooks:
        from fedsim.learning import training

        mu = float(ctx.config.get(messages.PROXIMAL_MU, 0.0))
        if not mu:
            return training.LocalHooks()
        anchor = [p.detach().clone() for p in model.parameters()]
        return training.LocalHooks(proximal=(mu, anchor))
