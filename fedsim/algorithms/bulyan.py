"""Bulyan (El Mhamdi et al., ICML 2018): MultiKrum keeps n - 2f models (f =
--num-malicious), then each coordinate is the mean of the n - 4f values nearest its
median; it needs n >= 4f + 3 replies. Flower's Bulyan."""

from __future__ import annotations

from flwr.serverapp import strategy as strategies

from fedsim.algorithms.base import NUM_MALICIOUS, SAMPLE_ALL, Algorithm
from fedsim.algorithms.krum import per_round
from fedsim.ground.errors import ConfigError
from fedsim.ground.option import flag


class Bulyan(Algorithm):
    source = "El Mhamdi et al., ICML 2018"
    num_malicious = NUM_MALICIOUS

    def strategy(self) -> strategies.Strategy:
        return strategies.Bulyan(**SAMPLE_ALL, num_malicious_nodes=self.num_malicious)

    def check(self) -> None:
        f, sampled = self.num_malicious, self.cfg.sampled_per_round
        if sampled < 4 * f + 3:
            raise ConfigError(
                flag("num_malicious"),
                f"Bulyan needs 4 × {f} + 3 = {4 * f + 3} replies a round, {per_round(sampled)}; "
                "Flower's Bulyan would skip every round",
            )
