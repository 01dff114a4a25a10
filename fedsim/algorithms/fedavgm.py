"""FedAvgM (Hsu et al., 2019): FedAvg with server momentum. Flower's FedAvgM."""

from __future__ import annotations

from flwr.serverapp import strategy

from fedsim.algorithms.base import SAMPLE_ALL, SERVER_LR, Algorithm, given
from fedsim.ground.config import Option


class FedAvgM(Algorithm):
    source = "Hsu et al., 2019"
    server_lr = SERVER_LR
    server_momentum = Option(None, "server momentum (auto: Flower's)", bounds="[0, 1)", type=float)

    def strategy(self) -> strategy.Strategy:
        return strategy.FedAvgM(
            **SAMPLE_ALL,
            **given(server_learning_rate=self.server_lr, server_momentum=self.server_momentum),
        )
