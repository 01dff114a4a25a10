"""The federated algorithms, one module each: its client side and its server side.

Adding an algorithm = one module here (a subclass of `base.Algorithm`), its test, and
one line in ALGORITHMS. Entries are import paths so that naming and validating an
algorithm (the command line, experiment files) imports nothing heavy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fedsim.algorithms.base import Algorithm
    from fedsim.ground.config import RunConfig

ALGORITHMS = {
    "fedavg": "fedsim.algorithms.fedavg:FedAvg",
    "fedprox": "fedsim.algorithms.fedprox:FedProx",
    "fedavgm": "fedsim.algorithms.fedavgm:FedAvgM",
    "fedadam": "fedsim.algorithms.fedopt:FedAdam",
    "fedyogi": "fedsim.algorithms.fedopt:FedYogi",
    "fedadagrad": "fedsim.algorithms.fedopt:FedAdagrad",
    "fedbuff": "fedsim.algorithms.fedbuff:FedBuff",
    "scaffold": "fedsim.algorithms.scaffold:Scaffold",
    "fednova": "fedsim.algorithms.fednova:FedNova",
    "fedmedian": "fedsim.algorithms.fedmedian:FedMedian",
    "fedtrimmedavg": "fedsim.algorithms.fedtrimmedavg:FedTrimmedAvg",
    "krum": "fedsim.algorithms.krum:Krum",
    "multikrum": "fedsim.algorithms.krum:MultiKrum",
    "bulyan": "fedsim.algorithms.bulyan:Bulyan",
    "qfedavg": "fedsim.algorithms.qfedavg:QFedAvg",
}
# Asynchronous algorithms: no rounds of sampled clients, but a buffer of updates that
# clients send whenever they finish on the simulated clock (fedsim.asynchronous).
ASYNCHRONOUS = ("fedbuff",)
# Algorithms --dp cannot wrap, and why
NOT_WITH_DP = {
    "scaffold": "its reply carries its control variates' change besides the model, and "
    "Flower's DP wrappers clip every array a reply holds as if it were the model",
    "fedbuff": "its updates arrive one by one on the simulated clock, not as rounds of "
    "sampled clients, so the accountant's sampling model does not describe them",
}


def algorithm_class(name: str) -> type[Algorithm]:
    module, _, attribute = ALGORITHMS[name].partition(":")
    return getattr(importlib.import_module(module), attribute)


def build(cfg: RunConfig) -> Algorithm:
    """The run's algorithm, configured from its options."""
    return algorithm_class(cfg.strategy)(cfg)
