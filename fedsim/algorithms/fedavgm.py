"""FedAvgM (Hsu et al., 2019): FedAvg with server momentum. Flower's FedAvgM."""

from __future__ import annotations

from flwr.serverapp import strategy

from fedsim.algorithms.base import SAMPLE_ALL, Algorithm, given


class FedAvgM(Algorithm):
    def strategy(self) -> strategy.Strategy:
        return strategy.FedAvgM(
            **SAMPLE_ALL,
            **given(
                server_learning_rate=self.cfg.server_lr, server_momentum=self.cfg.server_momentum
            ),
        )
