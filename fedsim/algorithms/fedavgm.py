"""FedAvgM (Hsu et al., 2019): FedAvg with server momentum. Flower's FedAvgM."""

from __future__ import annotations

from flwr.serverapp import strategy as strategies

from fedsim.algorithms.base import SAMPLE_ALL, SERVER_LR, Algorithm, given
from fedsim.ground.option import Bounds, Option


class FedAvgM(Algorithm):
    source = "Hsu et al., 2019"
    server_lr = SERVER_LR
    server_momentum = Option(
        None, "server momentum (auto: Flower's)", bounds=Bounds(0, 1, high_open=True), type=float
    )

    def strategy(self) -> strategies.Strategy:
        return strategies.FedAvgM(
            **SAMPLE_ALL,
            **given(server_learning_rate=self.server_lr, server_momentum=self.server_momentum),
        )
