"""Flower's own strategy classes, configured from a RunConfig.

fedsim samples clients itself (seeded, by partition id) and hands each strategy a view
of exactly the sampled nodes, so the strategies' own fractions are 1.0 and their
minimums 1: Flower's default minimum of 2 would wait forever for a second client.
"""

from __future__ import annotations

from typing import Any

from flwr.serverapp.strategy import (
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedProx,
    FedYogi,
    Strategy,
)

from fedsim.config import RunConfig

_SAMPLE_ALL = {
    "fraction_train": 1.0,
    "fraction_evaluate": 1.0,
    "min_train_nodes": 1,
    "min_evaluate_nodes": 1,
    "min_available_nodes": 1,
}


def _given(**options: Any) -> dict[str, Any]:
    """Only the options the user set, so Flower's defaults stay Flower's."""
    return {key: value for key, value in options.items() if value is not None}


def build_strategy(cfg: RunConfig) -> Strategy:
    if cfg.strategy == "fedavg":
        return FedAvg(**_SAMPLE_ALL)
    if cfg.strategy == "fedprox":
        return FedProx(**_SAMPLE_ALL, proximal_mu=cfg.proximal_mu)
    if cfg.strategy == "fedavgm":
        return FedAvgM(
            **_SAMPLE_ALL,
            **_given(server_learning_rate=cfg.server_lr, server_momentum=cfg.server_momentum),
        )
    optimizer = {"fedadam": FedAdam, "fedyogi": FedYogi, "fedadagrad": FedAdagrad}[cfg.strategy]
    return optimizer(**_SAMPLE_ALL, eta_l=cfg.lr, **_given(eta=cfg.server_lr))
