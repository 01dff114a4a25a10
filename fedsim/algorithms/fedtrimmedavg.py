"""FedTrimmedAvg (Yin et al., ICML 2018): per coordinate, the mean of the clients' values
once the largest and smallest `--trim-fraction` of them are cut. Flower's FedTrimmedAvg."""

from __future__ import annotations

from flwr.serverapp import strategy as strategies

from fedsim.algorithms.base import SAMPLE_ALL, Algorithm
from fedsim.ground.option import Bounds, Option


class FedTrimmedAvg(Algorithm):
    source = "Yin et al., ICML 2018"
    trim_fraction = Option(
        0.2,
        "share of the clients' values cut from each end, per coordinate (beta)",
        Bounds(0, 0.5, high_open=True),
    )

    def strategy(self) -> strategies.Strategy:
        return strategies.FedTrimmedAvg(**SAMPLE_ALL, beta=self.trim_fraction)
