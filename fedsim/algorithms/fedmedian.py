"""FedMedian (Yin et al., ICML 2018): the coordinate-wise median of the clients' models,
robust to a minority of arbitrary replies. Flower's FedMedian."""

from __future__ import annotations

from flwr.serverapp import strategy as strategies

from fedsim.algorithms.base import SAMPLE_ALL, Algorithm


class FedMedian(Algorithm):
    source = "Yin et al., ICML 2018"

    def strategy(self) -> strategies.Strategy:
        return strategies.FedMedian(**SAMPLE_ALL)
