"""FedAvg (McMahan et al., 2017): local SGD, the server averages the weights by the
clients' example counts. Flower's FedAvg."""

from __future__ import annotations

from flwr.serverapp import strategy as strategies

from fedsim.algorithms.base import SAMPLE_ALL, Algorithm


class FedAvg(Algorithm):
    source = "McMahan et al., AISTATS 2017"

    def strategy(self) -> strategies.Strategy:
        return strategies.FedAvg(**SAMPLE_ALL)
