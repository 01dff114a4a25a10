"""FedTrimmedAvg (Yin et al., ICML 2018): per coordinate, the mean of the clients' values
once the largest and smallest `--trim-fraction` of them are cut. Flower's FedTrimmedAvg."""

from __future__ import annotations

from flwr.serverapp import strategy

from fedsim.algorithms.base import SAMPLE_ALL, Algorithm


class FedTrimmedAvg(Algorithm):
    def strategy(self) -> strategy.Strategy:
        return strategy.FedTrimmedAvg(**SAMPLE_ALL, beta=self.cfg.trim_fraction)
