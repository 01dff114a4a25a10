"""The one run configuration: a frozen dataclass, validated once, flowing one way.

Every option is declared here exactly once, with its help text; the CLI, the TOML
loader and the result files are all derived from these fields.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any

HUB_CIFAR10 = "uoft-cs/cifar10"
MODELS = ("cnn", "resnet18")
PARTITIONS = ("iid", "dirichlet", "pathological", "shard")
STRATEGIES = ("fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad")
NUM_CLASSES = 10


class ConfigError(ValueError):
    """A bad option value: printed as one line, `error: <option>: <message>`."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(f"{option}: {message}")
        self.option = option


def _opt(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


@dataclass(frozen=True)
class RunConfig:
    """Everything that decides what a run computes (and where it writes)."""

    # Federation
    clients: int = _opt(
        2, "number of simulated clients (one data partition each)", bounds="[1, inf)"
    )
    rounds: int = _opt(3, "number of federated rounds", bounds="[1, inf)")
    fraction_fit: float = _opt(1.0, "share of clients sampled to train each round", bounds="(0, 1]")
    fraction_evaluate: float = _opt(
        1.0,
        "share of clients sampled for client-side evaluation (0: none)",
        bounds="[0, 1]",
    )
    strategy: str = _opt("fedavg", "aggregation strategy", choices=STRATEGIES)
    proximal_mu: float = _opt(
        0.0, "FedProx proximal term weight", bounds="[0, inf)", applies=("strategy", "fedprox")
    )
    server_lr: float | None = _opt(
        None,
        "server learning rate (fedavgm, fedadam, fedyogi, fedadagrad; default: Flower's)",
        bounds="(0, inf)",
        applies=("strategy", "fedavgm", "fedadam", "fedyogi", "fedadagrad"),
    )
    server_momentum: float | None = _opt(
        None,
        "server momentum (fedavgm; default: Flower's)",
        bounds="[0, 1)",
        applies=("strategy", "fedavgm"),
    )
    # Data
    data: str = _opt(
        HUB_CIFAR10,
        "Hugging Face dataset id, HF parquet folder or cifar-10-batches-py folder "
        "(default: $FEDSIM_DATA or uoft-cs/cifar10)",
    )
    partition: str = _opt("iid", "how the training set is split", choices=PARTITIONS)
    alpha: float = _opt(
        0.5,
        "Dirichlet concentration (--partition dirichlet)",
        bounds="(0, inf)",
        applies=("partition", "dirichlet"),
    )
    classes_per_client: int = _opt(
        2,
        "labels per client (--partition pathological)",
        bounds=f"[1, {NUM_CLASSES}]",
        applies=("partition", "pathological"),
    )
    shards_per_client: int = _opt(
        2,
        "label-sorted shards per client (--partition shard)",
        bounds="[1, inf)",
        applies=("partition", "shard"),
    )
    val_fraction: float = _opt(
        0.1,
        "share of each client's partition held out for its own evaluation",
        bounds="[0, 1)",
    )
    # Local training
    model: str = _opt("cnn", "model to train", choices=MODELS)
    local_epochs: int = _opt(1, "local epochs per round", bounds="[1, inf)")
    batch_size: int = _opt(32, "local batch size", bounds="[1, inf)")
    lr: float = _opt(0.01, "client learning rate (SGD)", bounds="(0, inf)")
    momentum: float = _opt(0.9, "client SGD momentum", bounds="[0, 1)")
    weight_decay: float = _opt(0.0, "client SGD weight decay", bounds="[0, inf)")
    augment: bool = _opt(False, "random crop (padding 4) + horizontal flip on clients")
    seed: int = _opt(0, "seed for partitions, init, shuffling and sampling", bounds="[0, inf)")
    # Resources
    cpus_per_client: float = _opt(1.0, "CPUs reserved per client actor", bounds="(0, inf)")
    gpus_per_client: float | None = _opt(
        None,
        "GPU share per client, e.g. 0.25 (default: 0 without CUDA, auto with)",
        bounds="[0, inf)",
    )
    ray_address: str = _opt(
        "",
        "attach to an existing Ray cluster (HOST:PORT or auto); default: a private one",
    )
    # Reliability
    client_failure_rate: float = _opt(
        0.0,
        "probability that a client's train call fails (simulated dropout)",
        bounds="[0, 1]",
    )
    max_failed_rounds: int = _opt(
        3,
        "stop after this many rounds in a row in which every client failed",
        bounds="[1, inf)",
    )
    round_timeout: float = _opt(
        3600.0,
        "seconds to wait for client replies before cutting them off",
        bounds="(0, inf)",
    )
    # Output
    results_dir: str = _opt("results", "parent folder of the run folders")
    name: str = _opt("", "run folder name (default: time and key settings)")

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def evaluates_on_clients(self) -> bool:
        return self.fraction_evaluate > 0 and self.val_fraction > 0


def fields() -> tuple[dataclasses.Field, ...]:
    return dataclasses.fields(RunConfig)


def applies(cfg: RunConfig, name: str) -> bool:
    """Whether option `name` can change what `cfg` computes: alpha matters only to a
    Dirichlet partition, proximal_mu only to FedProx (its `applies` metadata)."""
    rule = next(f for f in fields() if f.name == name).metadata.get("applies")
    return rule is None or getattr(cfg, rule[0]) in rule[1:]


def value_type(name: str) -> type:
    """An option's type, without the None of an optional one (`float | None` -> float)."""
    hint = typing.get_type_hints(RunConfig)[name]
    if isinstance(hint, types.UnionType):
        return next(t for t in typing.get_args(hint) if t is not type(None))
    return hint


def default_data() -> str:
    return os.environ.get("FEDSIM_DATA") or HUB_CIFAR10


def _in_bounds(value: float, bounds: str) -> bool:
    low, high = (part.strip() for part in bounds[1:-1].split(","))
    low_ok = low == "-inf" or (value >= float(low) if bounds[0] == "[" else value > float(low))
    high_ok = high == "inf" or (value <= float(high) if bounds[-1] == "]" else value < float(high))
    return low_ok and high_ok


def _rule(bounds: str) -> str:
    low, high = (part.strip() for part in bounds[1:-1].split(","))
    if high == "inf":
        return f"{'≥' if bounds[0] == '[' else '>'} {low}"
    return f"in {bounds}"


def validate(cfg: RunConfig) -> RunConfig:
    """Check every value against its declared bounds or choices; raise on the first bad one."""
    for f in fields():
        value = getattr(cfg, f.name)
        bounds = f.metadata.get("bounds")
        choices = f.metadata.get("choices")
        if bounds and value is not None and not _in_bounds(value, bounds):
            raise ConfigError(flag(f.name), f"got {value}, must be {_rule(bounds)}")
        if choices and value not in choices:
            raise ConfigError(
                flag(f.name),
                f"unknown value {value!r}, choose from {', '.join(choices)}",
            )
    gpus = cfg.gpus_per_client
    if gpus is not None and gpus > 1 and not float(gpus).is_integer():
        raise ConfigError(
            flag("gpus_per_client"), f"must be a share in [0, 1] or a whole number, got {gpus}"
        )
    if not cfg.data:
        raise ConfigError(flag("data"), "must not be empty")
    if cfg.name and not _is_plain_name(cfg.name):
        raise ConfigError(
            flag("name"),
            f"{cfg.name!r} must be a plain folder name (no '/', '..' or leading '.')",
        )
    return cfg


def _is_plain_name(name: str) -> bool:
    return (
        os.sep not in name
        and "/" not in name
        and not name.startswith(".")
        and name.strip() == name
        and name != ""
    )


def flag(name: str) -> str:
    """The CLI spelling of a field: clients -> --clients."""
    return "--" + name.replace("_", "-")
