"""The one run configuration: a frozen dataclass, validated once, flowing one way.

Every option is declared here exactly once, with its help text; the CLI, the TOML
loader and the result files are all derived from these fields.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from fedsim.algorithms import ALGORITHMS, ASYNCHRONOUS, NOT_WITH_DP
from fedsim.ground.errors import ConfigError

HUB_CIFAR10 = "uoft-cs/cifar10"
MODELS = ("cnn", "resnet18")
PARTITIONS = ("iid", "dirichlet", "pathological", "shard")
STRATEGIES = tuple(ALGORITHMS)  # fedsim.algorithms: one module each
SYNCHRONOUS = tuple(s for s in STRATEGIES if s not in ASYNCHRONOUS)  # rounds of sampled clients
DP_MODES = ("off", "server-fixed", "server-adaptive", "client-fixed")
ATTACKS = ("sign-flip", "gaussian", "scale", "label-flip")
NUM_CLASSES = 10
MAX_SEED = 2**32 - 1  # numpy and torch both take it; a common bound users know
# Beyond this a round spends no measurable privacy (ε rounds to 0) and dp-accounting's
# Rényi accountant fails (a math domain error from about 3·10⁸)
MAX_NOISE_MULTIPLIER = 1e6
RAY_RESOURCE_UNIT = 1e-4  # Ray counts CPUs and GPUs in units of 1/10,000 (its FixedPoint)
MAX_NAME = 120  # characters of a run name: room for file names under any file system's limit


# Option roles, declared once on each field (`roles=`); the partition cache key, the
# sweep planner, the experiment's staleness check and the summary derive from them.
SPLITS = "splits"  # decides the partitions: part of the partition cache key
FIXED = "fixed"  # one value per experiment, never swept or varied by [[variant]]
WHERE = "where"  # where a run goes, not what it computes: no summary column
NOT_COMPARED = "not-compared"  # how a run computes, not what: a finished run stays valid


def _opt(default: Any, help: str, roles: tuple[str, ...] = (), **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, "roles": roles, **extra})


@dataclass(frozen=True)
class RunConfig:
    """Everything that decides what a run computes (and where it writes)."""

    # Federation
    clients: int = _opt(
        2,
        "number of simulated clients (one data partition each)",
        roles=(SPLITS,),
        bounds="[1, inf)",
    )
    rounds: int = _opt(3, "number of federated rounds", bounds="[1, inf)")
    fraction_fit: float = _opt(1.0, "share of clients sampled to train each round", bounds="(0, 1]")
    fraction_evaluate: float = _opt(
        1.0,
        "share of clients sampled for client-side evaluation (0: none)",
        bounds="[0, 1]",
    )
    evaluate_all_every: int = _opt(
        0,
        "every K rounds and after the last, evaluate on every client's held-out share "
        "(0: the sampled clients only)",
        bounds="[0, inf)",
    )
    strategy: str = _opt("fedavg", "aggregation strategy", choices=STRATEGIES)
    proximal_mu: float = _opt(
        0.0, "FedProx proximal term weight", bounds="[0, inf)", applies=("strategy", "fedprox")
    )
    server_lr: float | None = _opt(
        None,
        "server learning rate (fedavgm, fedadam, fedyogi, fedadagrad: default Flower's; "
        "fedbuff: default 1)",
        bounds="(0, inf)",
        applies=("strategy", "fedavgm", "fedadam", "fedyogi", "fedadagrad", "fedbuff"),
    )
    server_momentum: float | None = _opt(
        None,
        "server momentum (fedavgm; default: Flower's)",
        bounds="[0, 1)",
        applies=("strategy", "fedavgm"),
    )
    # The simulated clock (fedsim.clock): device profiles, how a round ends, FedBuff
    profiles: str = _opt(
        "",
        "client device profiles: a CSV file (client, examples_per_second, down_mbps, up_mbps, "
        "online) or 'lognormal' (seeded draws around published medians); default: every "
        "client the median device, always online",
    )
    deadline: float | None = _opt(
        None,
        "simulated seconds a round waits: the updates of clients not done by then are "
        "discarded and counted as stragglers (default: wait for every client)",
        bounds="(0, inf)",
        applies=("strategy", *SYNCHRONOUS),
        unset="none",
    )
    over_select: float | None = _opt(
        None,
        "sample ceil(F·k) clients and keep the first k to finish (Bonawitz et al. 2019: 1.3)",
        bounds="[1, inf)",
        applies=("strategy", *SYNCHRONOUS),
        unset="none",
    )
    buffer_size: int = _opt(
        10,
        "FedBuff: client updates the server waits for before each model update (K)",
        bounds="[1, inf)",
        applies=("strategy", *ASYNCHRONOUS),
    )
    concurrency: int = _opt(
        20,
        "FedBuff: clients training at once in simulated time (C)",
        bounds="[1, inf)",
        applies=("strategy", *ASYNCHRONOUS),
    )
    target_accuracy: float | None = _opt(
        None,
        "summary.csv's sim_seconds_to_target: simulated seconds until central accuracy "
        "first reaches this",
        roles=(FIXED, NOT_COMPARED),  # it only reads the rounds: a finished run stays valid
        bounds="(0, 1]",
        unset="none",
    )
    trim_fraction: float = _opt(
        0.2,
        "share of the clients' values cut from each end, per coordinate (fedtrimmedavg's beta)",
        bounds="[0, 0.5)",
        applies=("strategy", "fedtrimmedavg"),
    )
    num_malicious: int = _opt(
        0,
        "malicious clients the aggregation must withstand (krum, multikrum, bulyan)",
        bounds="[0, inf)",
        applies=("strategy", "krum", "multikrum", "bulyan"),
    )
    num_to_keep: int = _opt(
        1,
        "replies MultiKrum selects and averages",
        bounds="[1, inf)",
        applies=("strategy", "multikrum"),
    )
    q: float = _opt(
        0.1,
        "q-FFL fairness exponent (qfedavg; 0 weighs every client's loss alike)",
        bounds="[0, inf)",
        applies=("strategy", "qfedavg"),
    )
    # Differential privacy (Flower's DP strategy wrappers; fedsim.privacy)
    dp: str = _opt(
        "off",
        "differential privacy: server-side fixed or adaptive clipping, or client-side "
        "fixed clipping, with Gaussian noise on the aggregate",
        choices=DP_MODES,
    )
    dp_noise_multiplier: float = _opt(
        1.0,
        "noise standard deviation over the clipping norm (> 0: without noise no privacy "
        "can be accounted)",
        bounds=f"(0, {MAX_NOISE_MULTIPLIER:g}]",
        applies=("dp", *DP_MODES[1:]),
    )
    dp_clipping_norm: float = _opt(
        1.0,
        "L2 norm each client's update is clipped to (server-adaptive: the initial norm)",
        bounds="(0, inf)",
        applies=("dp", *DP_MODES[1:]),
    )
    dp_delta: float = _opt(
        1e-5,
        "delta at which the privacy spent (dp_epsilon in rounds.csv) is reported",
        bounds="(0, 1)",
        applies=("dp", *DP_MODES[1:]),
    )
    # Simulated attacks (fedsim.attacks)
    byzantine_fraction: float = _opt(
        0.0,
        "share of clients that are malicious (chosen by the seed, listed in config.json)",
        bounds="[0, 1)",
    )
    attack: str = _opt(
        "sign-flip",
        "what malicious clients do: send the negated update, noise of the update's scale, "
        "the update ×10, or train on flipped labels",
        choices=ATTACKS,
    )
    # Data
    data: str = _opt(
        HUB_CIFAR10,
        "Hugging Face dataset id, HF parquet folder or cifar-10-batches-py folder "
        "(default: $FEDSIM_DATA or uoft-cs/cifar10)",
        roles=(FIXED, NOT_COMPARED),  # compared by its content key instead
    )
    partition: str = _opt(
        "iid", "how the training set is split", roles=(SPLITS,), choices=PARTITIONS
    )
    alpha: float = _opt(
        0.5,
        "Dirichlet concentration (--partition dirichlet)",
        roles=(SPLITS,),
        bounds="(0, inf)",
        applies=("partition", "dirichlet"),
    )
    dirichlet_balance: bool = _opt(
        False,
        "NIID-Bench's balancing: a client holding more than its share of examples gets no "
        "more of the next label (flwr-datasets' self_balancing)",
        roles=(SPLITS,),
        applies=("partition", "dirichlet"),
    )
    min_partition_size: int = _opt(
        0,
        "redraw the Dirichlet split until every client holds at least this many examples",
        roles=(SPLITS,),
        bounds="[0, inf)",
        applies=("partition", "dirichlet"),
    )
    classes_per_client: int = _opt(
        2,
        "labels per client (--partition pathological)",
        roles=(SPLITS,),
        bounds=f"[1, {NUM_CLASSES}]",
        applies=("partition", "pathological"),
    )
    shards_per_client: int = _opt(
        2,
        "label-sorted shards per client (--partition shard)",
        roles=(SPLITS,),
        bounds="[1, inf)",
        applies=("partition", "shard"),
    )
    val_fraction: float = _opt(
        0.1,
        "share of each client's partition held out for its own evaluation",
        roles=(SPLITS,),
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
    seed: int = _opt(
        0,
        "seed for partitions, init, shuffling and sampling",
        roles=(SPLITS,),
        bounds=f"[0, {MAX_SEED}]",
    )
    # Resources and transport: how the simulation runs, never what it computes
    cpus_per_client: float = _opt(
        1.0, "CPUs reserved per client actor", roles=(NOT_COMPARED,), bounds="(0, inf)"
    )
    gpus_per_client: float | None = _opt(
        None,
        "GPU share per client, e.g. 0.25 (default: 0 without CUDA, auto with)",
        roles=(NOT_COMPARED,),
        bounds="[0, inf)",
    )
    clients_per_message: int | None = _opt(
        None,
        "virtual clients one engine message carries (default: auto; 1: one each)",
        roles=(NOT_COMPARED,),
        bounds="[1, inf)",
    )
    ray_address: str = _opt(
        "",
        "attach to an existing Ray cluster (HOST:PORT or auto); default: a private one",
        roles=(FIXED, NOT_COMPARED),
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
        roles=(NOT_COMPARED,),
        bounds="(0, inf)",
    )
    # Output
    results_dir: str = _opt(
        "results", "parent folder of the run folders", roles=(FIXED, WHERE, NOT_COMPARED)
    )
    tensorboard: str = _opt(
        "",
        "write TensorBoard event files (config and every round's metrics) to this folder",
        roles=(FIXED, WHERE, NOT_COMPARED),
    )
    mlflow: str = _opt(
        "",
        "log the config and every round's metrics to MLflow: a local folder (file store) "
        "or a tracking server URI",
        roles=(FIXED, WHERE, NOT_COMPARED),
    )
    name: str = _opt(
        "",
        "run folder name (default: time and key settings)",
        roles=(FIXED, WHERE, NOT_COMPARED),
    )

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def evaluates_on_clients(self) -> bool:
        return self.fraction_evaluate > 0 and self.val_fraction > 0


def fields() -> tuple[dataclasses.Field, ...]:
    return dataclasses.fields(RunConfig)


def with_role(role: str) -> tuple[str, ...]:
    """The options tagged with `role`, in field order."""
    return tuple(f.name for f in fields() if role in f.metadata["roles"])


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


def shown(name: str, value: Any) -> str:
    """An option's value as help text and run labels say it; an unset optional one is
    `auto` (fedsim picks) unless its field says what unset means (`none`)."""
    if value is not None:
        return str(value)
    return next(f for f in fields() if f.name == name).metadata.get("unset", "auto")


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
    """Check every value, then the options that must agree with each other; raise on
    the first bad one."""
    return _check_together(validate_values(cfg))


def validate_values(cfg: RunConfig) -> RunConfig:
    """Check every value against its declared bounds or choices; raise on the first bad one."""
    for f in fields():
        value = getattr(cfg, f.name)
        bounds = f.metadata.get("bounds")
        choices = f.metadata.get("choices")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(flag(f.name), f"must be a finite number, got {value}")
        if bounds and value is not None and not _in_bounds(value, bounds):
            raise ConfigError(flag(f.name), f"got {value}, must be {_rule(bounds)}")
        if choices and value not in choices:
            raise ConfigError(
                flag(f.name),
                f"unknown value {value!r}, choose from {', '.join(choices)}",
            )
    gpus = cfg.gpus_per_client
    if gpus is not None and 0 < gpus < RAY_RESOURCE_UNIT:
        raise ConfigError(
            flag("gpus_per_client"), f"got {gpus:g}, Ray's smallest share is {RAY_RESOURCE_UNIT:g}"
        )
    if gpus is not None and gpus > 1 and not float(gpus).is_integer():
        raise ConfigError(
            flag("gpus_per_client"), f"must be a share in [0, 1] or a whole number, got {gpus}"
        )
    if not cfg.data:
        raise ConfigError(flag("data"), "must not be empty")
    if not cfg.name.isprintable():
        raise ConfigError(
            flag("name"), f"{cfg.name!r} must be printable (no newline or control characters)"
        )
    if cfg.name and not _is_plain_name(cfg.name):
        raise ConfigError(
            flag("name"),
            f"{cfg.name!r} must be a plain folder name (no '/', '..' or leading '.')",
        )
    if len(cfg.name) > MAX_NAME:
        raise ConfigError(flag("name"), f"has {len(cfg.name)} characters, at most {MAX_NAME}")
    return cfg


def sample_count(clients: int, fraction: float) -> int:
    """How many clients a round samples (fedsim.server_app draws which)."""
    return min(clients, max(1, int(clients * fraction)))


def _check_together(cfg: RunConfig) -> RunConfig:
    """What Flower's strategies would otherwise refuse mid-run, or skip silently."""
    sampled = sample_count(cfg.clients, cfg.fraction_fit)
    per_round = f"{sampled} train each round (--clients × --fraction-fit)"
    if cfg.strategy == "bulyan" and sampled < 4 * cfg.num_malicious + 3:
        raise ConfigError(
            flag("num_malicious"),
            f"Bulyan needs 4 × {cfg.num_malicious} + 3 = {4 * cfg.num_malicious + 3} replies "
            f"a round, {per_round}; Flower's Bulyan would skip every round",
        )
    if cfg.strategy in ("krum", "multikrum") and sampled < 2 * cfg.num_malicious + 3:
        raise ConfigError(
            flag("num_malicious"),
            f"Krum needs 2 × {cfg.num_malicious} + 3 = {2 * cfg.num_malicious + 3} replies a "
            f"round to withstand {cfg.num_malicious} malicious clients (Blanchard et al.), "
            f"{per_round}",
        )
    if cfg.strategy == "multikrum" and cfg.num_to_keep > sampled:
        raise ConfigError(flag("num_to_keep"), f"got {cfg.num_to_keep}, but {per_round}")
    if cfg.dp != "off" and cfg.strategy in NOT_WITH_DP:
        raise ConfigError(flag("dp"), f"{cfg.strategy}: {NOT_WITH_DP[cfg.strategy]}")
    if cfg.dp == "server-adaptive" and cfg.dp_noise_multiplier * 10 >= sampled:
        raise ConfigError(
            flag("dp_noise_multiplier"),
            f"server-adaptive clipping spends part of the noise on counting clipped updates "
            f"(standard deviation clients/20); Flower needs more than 10 × "
            f"{cfg.dp_noise_multiplier:g} clients a round, {per_round}",
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
