"""Bulyan (El Mhamdi et al., ICML 2018): MultiKrum keeps n - 2f models (f =
--num-malicious), then each coordinate is the mean of the n - 4f values nearest its
median; it needs n >= 4f + 3 replies (fedsim.config checks). Flower's Bulyan."""

from __future__ import annotations

from flwr.serverapp import strategy

from fedsim.algorithms.base import SAMPLE_ALL, Algorithm


class Bulyan(Algorithm):
    def strategy(self) -> strategy.Strategy:
        return strategy.Bulyan(**SAMPLE_ALL, num_malicious_nodes=self.cfg.num_malicious)
