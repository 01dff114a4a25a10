"""The federated algorithms, one module each, and their registry.

An algorithm is a subclass of `base.Algorithm` in a module of its own that declares its
options, checks and flags and implements its server and client sides (see base.py).
Adding one is that module, its test, and one line in ALGORITHMS (its `--strategy`
name and where its class is); docs/algorithms.md walks through FedDyn as the example.
A user's algorithm, outside fedsim, is named by its own path (`--strategy
my_algos:FedFoo`) and registered under it once checked (fedsim.runner.options.admit).
Attacks and differential privacy live beside them (attacks.py, privacy.py): every
algorithm is attacked and privatised the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedsim.ground import imports
from fedsim.ground.errors import ConfigError

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
    "feddyn": "fedsim.algorithms.feddyn:FedDyn",
    "fedmedian": "fedsim.algorithms.fedmedian:FedMedian",
    "fedtrimmedavg": "fedsim.algorithms.fedtrimmedavg:FedTrimmedAvg",
    "krum": "fedsim.algorithms.krum:Krum",
    "multikrum": "fedsim.algorithms.krum:MultiKrum",
    "bulyan": "fedsim.algorithms.bulyan:Bulyan",
    "qfedavg": "fedsim.algorithms.qfedavg:QFedAvg",
    # personal: each client ends with a model of its own (fedsim.algorithms.personal)
    "local": "fedsim.algorithms.local:Local",
    "fedavg-ft": "fedsim.algorithms.fedavg_ft:FedAvgFT",
    "fedper": "fedsim.algorithms.fedper:FedPer",
    "fedrep": "fedsim.algorithms.fedrep:FedRep",
    "lg-fedavg": "fedsim.algorithms.lg_fedavg:LGFedAvg",
    "ditto": "fedsim.algorithms.ditto:Ditto",
    "apfl": "fedsim.algorithms.apfl:APFL",
    "fedbn": "fedsim.algorithms.fedbn:FedBN",
    "perfedavg": "fedsim.algorithms.perfedavg:PerFedAvg",
    "pfedme": "fedsim.algorithms.pfedme:PFedMe",
}


def algorithm_class(name: str) -> type[Algorithm]:
    """The class registered as `name`, or the one a user's `module:Class` names (in a
    process that has not registered it: a client's)."""
    if name not in ALGORITHMS:
        return user_algorithm(name)
    return imports.resolve(ALGORITHMS[name])


def user_algorithm(path: str) -> type[Algorithm]:
    """The class a user's `module:Class` names; ConfigError unless it is an Algorithm."""
    from fedsim.algorithms.base import Algorithm

    found = imports.load(path, "--strategy")
    if not (isinstance(found, type) and issubclass(found, Algorithm)):
        raise ConfigError(
            "--strategy", f"{path!r} is not a subclass of fedsim.Algorithm (fedsim.algorithms.base)"
        )
    if old := [name for name in RETIRED if hasattr(found, name)]:
        raise ConfigError(
            "--strategy",
            f"{path} defines {old[0]}(), a client entry fedsim no longer calls: write "
            "train_group(ctxs, trainer) (docs/extending.md), or change hooks(), update() "
            "or reply()",
        )
    return found


RETIRED = ("train", "train_together")  # client entries of earlier fedsims (now train_group)


def is_personal(cfg: RunConfig) -> bool:
    """Whether the run's clients end with models of their own (its files then carry
    personal columns: fedsim.outputs.records)."""
    return algorithm_class(cfg.strategy).personal


def build(cfg: RunConfig) -> Algorithm:
    """The run's algorithm, configured from its options."""
    return algorithm_class(cfg.strategy)(cfg)
