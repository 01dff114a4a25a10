"""Krum and MultiKrum (Blanchard et al., NeurIPS 2017): score each model by its squared
distances to its n - f - 2 nearest neighbours (f = --num-malicious) and keep the best
one (Krum) or the `--num-to-keep` best, averaged by example count (MultiKrum). Flower's
Krum and MultiKrum."""

from __future__ import annotations

from flwr.serverapp import strategy

from fedsim.algorithms.base import SAMPLE_ALL, Algorithm


class Krum(Algorithm):
    def strategy(self) -> strategy.Strategy:
        return strategy.Krum(**SAMPLE_ALL, num_malicious_nodes=self.cfg.num_malicious)


class MultiKrum(Algorithm):
    def strategy(self) -> strategy.Strategy:
        return strategy.MultiKrum(
            **SAMPLE_ALL,
            num_malicious_nodes=self.cfg.num_malicious,
            num_nodes_to_select=self.cfg.num_to_keep,
        )
