"""Krum and MultiKrum (Blanchard et al., NeurIPS 2017): score each model by its squared
distances to its n - f - 2 nearest neighbours (f = --num-malicious) and keep the best
one (Krum) or the `--num-to-keep` best, averaged by example count (MultiKrum); the rule
withstands f malicious clients among n ≥ 2f + 3. Flower's Krum and MultiKrum."""

from __future__ import annotations

from flwr.serverapp import strategy as strategies

from fedsim.algorithms.base import NUM_MALICIOUS, SAMPLE_ALL, Algorithm
from fedsim.ground.errors import ConfigError
from fedsim.ground.option import Option, at_least, flag


def per_round(sampled: int) -> str:
    return f"{sampled} train each round (--clients × --fraction-fit)"


class Krum(Algorithm):
    source = "Blanchard et al., NeurIPS 2017"
    num_malicious = NUM_MALICIOUS

    def strategy(self) -> strategies.Strategy:
        return strategies.Krum(**SAMPLE_ALL, num_malicious_nodes=self.num_malicious)

    def check(self) -> None:
        f, sampled = self.num_malicious, self.cfg.sampled_per_round
        if sampled < 2 * f + 3:
            raise ConfigError(
                flag("num_malicious"),
                f"Krum needs 2 × {f} + 3 = {2 * f + 3} replies a round to withstand {f} "
                f"malicious clients (Blanchard et al.), {per_round(sampled)}",
            )


class MultiKrum(Krum):
    num_to_keep = Option(1, "replies MultiKrum selects and averages", at_least(1))

    def strategy(self) -> strategies.Strategy:
        return strategies.MultiKrum(
            **SAMPLE_ALL,
            num_malicious_nodes=self.num_malicious,
            num_nodes_to_select=self.num_to_keep,
        )

    def check(self) -> None:
        super().check()
        sampled = self.cfg.sampled_per_round
        if self.num_to_keep > sampled:
            raise ConfigError(
                flag("num_to_keep"), f"got {self.num_to_keep}, but {per_round(sampled)}"
            )
