"""FedProx (Li et al., MLSys 2020): FedAvg whose clients add mu/2 · ||w - w_global||²
to their loss. Flower's FedProx sends mu in each client's config."""

from __future__ import annotations

from flwr.serverapp import strategy
from torch import nn

from fedsim.algorithms.base import SAMPLE_ALL, Algorithm, ClientContext
from fedsim.ground import messages
from fedsim.learning import training


class FedProx(Algorithm):
    def strategy(self) -> strategy.Strategy:
        return strategy.FedProx(**SAMPLE_ALL, proximal_mu=self.cfg.proximal_mu)

    def hooks(self, ctx: ClientContext, model: nn.Module) -> training.LocalHooks:
        mu = float(ctx.config.get(messages.PROXIMAL_MU, 0.0))
        if not mu:
            return training.LocalHooks()
        anchor = [p.detach().clone() for p in model.parameters()]
        return training.LocalHooks(extra_loss=training.proximal_term(anchor, mu))
