"""The run configuration: a frozen dataclass that flows one way, and the Option that
declares each of its settings.

RunConfig holds the options every run has, each declared once below with its help,
default, bounds, roles and the concern it belongs to (the `--help` groups). The field
order is the order of the words in a sweep's run names (`clients-8_dirichlet_seed-1`). The chosen
algorithm's own options are declared in its file (fedsim.algorithms) and their values
travel in `strategy_options`. fedsim.runner.options gathers both into one catalog: the
command line, experiment files, the Flower App's run config, validation, the summary
and the docs derive from it. Choices that a dispatch table holds (models, partitions,
DP modes, attacks, algorithms) are checked there against that table, not listed here.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from fedsim.ground.errors import ConfigError

HUB_CIFAR10 = "uoft-cs/cifar10"
MAX_SEED = 2**32 - 1  # numpy and torch both take it; a common bound users know
# Beyond this a round spends no measurable privacy (ε rounds to 0) and dp-accounting's
# Rényi accountant fails (a math domain error from about 3·10⁸)
MAX_NOISE_MULTIPLIER = 1e6
RAY_RESOURCE_UNIT = 1e-4  # Ray counts CPUs and GPUs in units of 1/10,000 (its FixedPoint)
MAX_NAME = 120  # characters of a run name: room for file names under any file system's limit

# Option roles, declared on each option (`roles=`); the partition cache key, the sweep
# planner, the experiment's staleness check and the summary derive from them.
SPLITS = "splits"  # decides the partitions: part of the partition cache key
FIXED = "fixed"  # one value per experiment, never swept or varied by [[variant]]
WHERE = "where"  # where a run goes, not what it computes: no summary column
NOT_COMPARED = "not-compared"  # how a run computes, not what: a finished run stays valid

# What an option is about: the groups of `--help`, in this order
FEDERATION = "federation"
DATA = "data and partitions"
TRAINING = "local training"
ALGORITHM = "algorithm"
CLOCK = "simulated clock"
PRIVACY = "privacy and attacks"
FAULTS = "faults"
RESOURCES = "resources"
OUTPUTS = "outputs"
GROUPS = (FEDERATION, DATA, TRAINING, ALGORITHM, CLOCK, PRIVACY, FAULTS, RESOURCES, OUTPUTS)

# --vectorize: clients of a bundle trained at once (fedsim.learning.together)
VECTORIZE = (AUTO, ON, OFF) = ("auto", "on", "off")

# An `applies` rule that no option value states: the algorithm runs synchronous rounds
SYNCHRONOUS = "synchronous"


@dataclass
class Option:
    """One setting a run takes: its default, help, bounds or choices, roles, group and
    when it applies (None: always; (option, *values): when that option takes one of the
    values; SYNCHRONOUS: with an algorithm that runs rounds).

    RunConfig's own options are its fields (declared with `_opt`). An algorithm declares
    its options as class attributes (fedsim.algorithms.base); there an Option is a
    descriptor: `self.proximal_mu` reads the run's value."""

    default: Any
    help: str
    bounds: str | None = None
    choices: tuple[Any, ...] | None = None
    roles: tuple[str, ...] = ()
    group: str = ALGORITHM
    unset: str = "auto"  # what None means, as help and run labels say it ("none")
    applies: tuple[str, ...] | str | None = None
    type: type | None = None  # the value's type; by default the default's
    name: str = ""  # set where it is declared

    def __post_init__(self) -> None:
        if self.type is None and self.default is not None:
            self.type = type(self.default)

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        return instance.cfg.strategy_options.get(self.name, self.default)

    @property
    def optional(self) -> bool:
        """Whether None is a value (`auto` or `none` on the command line)."""
        return self.default is None

    def shown(self, value: Any) -> str:
        """The value as help text and run labels say it."""
        return self.unset if value is None else str(value)

    def check(self, value: Any) -> None:
        """The value against the option's type, finiteness and bounds; choices are the
        catalog's to check (they may come from a dispatch table)."""
        option = flag(self.name)
        if value is None:
            if not self.optional:
                raise ConfigError(option, "must be given")
            return
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, self.type) or (self.type is int and isinstance(value, bool)):
            raise ConfigError(option, f"must be {_noun(self.type)}, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(option, f"must be a finite number, got {value}")
        if self.bounds and not _in_bounds(value, self.bounds):
            raise ConfigError(option, f"got {value}, must be {_rule(self.bounds)}")
        if self.choices and value not in self.choices:
            raise ConfigError(
                option, f"unknown value {value!r}, choose from {', '.join(map(str, self.choices))}"
            )


def _noun(kind: type) -> str:
    return {int: "an integer", float: "a number", bool: "true or false"}.get(kind, "a string")


class StrategyOptions(Mapping[str, Any]):
    """The chosen algorithm's option values: a frozen, hashable mapping (a RunConfig is a
    cache key and a set member)."""

    def __init__(self, values: Mapping[str, Any] | None = None) -> None:
        self._items = tuple(sorted((values or {}).items()))

    def __getitem__(self, name: str) -> Any:
        for key, value in self._items:
            if key == name:
                return value
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return (key for key, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(self._items)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and dict(self._items) == dict(other)

    def __repr__(self) -> str:
        return f"StrategyOptions({dict(self._items)})"


def _opt(default: Any, help: str, group: str, roles: tuple[str, ...] = (), **extra: Any) -> Any:
    option = Option(default, help, roles=roles, group=group, **extra)
    return field(default=default, metadata={"option": option})


@dataclass(frozen=True)
class RunConfig:
    """Everything that decides what a run computes (and where it writes)."""

    # Federation
    clients: int = _opt(
        2,
        "number of simulated clients (one data partition each)",
        FEDERATION,
        roles=(SPLITS,),
        bounds="[1, inf)",
    )
    rounds: int = _opt(3, "number of federated rounds", FEDERATION, bounds="[1, inf)")
    fraction_fit: float = _opt(
        1.0, "share of clients sampled to train each round", FEDERATION, bounds="(0, 1]"
    )
    fraction_evaluate: float = _opt(
        1.0,
        "share of clients sampled for client-side evaluation (0: none)",
        FEDERATION,
        bounds="[0, 1]",
    )
    evaluate_all_every: int = _opt(
        0,
        "every K rounds and after the last, evaluate on every client's held-out share "
        "(0: the sampled clients only)",
        FEDERATION,
        bounds="[0, inf)",
    )
    strategy: str = _opt("fedavg", "the algorithm (its options: below)", ALGORITHM)
    # The simulated clock (fedsim.simulation.clock): device profiles, how a round ends
    profiles: str = _opt(
        "",
        "client device profiles: a CSV file (client, examples_per_second, down_mbps, up_mbps, "
        "online) or 'lognormal' (seeded draws around published medians); default: every "
        "client the median device, always online",
        CLOCK,
    )
    deadline: float | None = _opt(
        None,
        "simulated seconds a round waits: the updates of clients not done by then are "
        "discarded and counted as stragglers (default: wait for every client)",
        CLOCK,
        bounds="(0, inf)",
        applies=SYNCHRONOUS,
        unset="none",
        type=float,
    )
    over_select: float | None = _opt(
        None,
        "sample ceil(F·k) clients and keep the first k to finish (Bonawitz et al. 2019: 1.3)",
        CLOCK,
        bounds="[1, inf)",
        applies=SYNCHRONOUS,
        unset="none",
        type=float,
    )
    target_accuracy: float | None = _opt(
        None,
        "summary.csv's sim_seconds_to_target: simulated seconds until central accuracy "
        "first reaches this",
        CLOCK,
        roles=(FIXED, NOT_COMPARED),  # it only reads the rounds: a finished run stays valid
        bounds="(0, 1]",
        unset="none",
        type=float,
    )
    # Differential privacy and attacks (fedsim.algorithms.privacy, .attacks)
    dp: str = _opt(
        "off",
        "differential privacy: server-side fixed or adaptive clipping, or client-side "
        "fixed clipping, with Gaussian noise on the aggregate",
        PRIVACY,
    )
    dp_noise_multiplier: float = _opt(
        1.0,
        "noise standard deviation over the clipping norm (> 0: without noise no privacy "
        "can be accounted)",
        PRIVACY,
        bounds=f"(0, {MAX_NOISE_MULTIPLIER:g}]",
        applies=("dp", "server-fixed", "server-adaptive", "client-fixed"),
    )
    dp_clipping_norm: float = _opt(
        1.0,
        "L2 norm each client's update is clipped to (server-adaptive: the initial norm)",
        PRIVACY,
        bounds="(0, inf)",
        applies=("dp", "server-fixed", "server-adaptive", "client-fixed"),
    )
    dp_delta: float = _opt(
        1e-5,
        "delta at which the privacy spent (dp_epsilon in rounds.csv) is reported",
        PRIVACY,
        bounds="(0, 1)",
        applies=("dp", "server-fixed", "server-adaptive", "client-fixed"),
    )
    byzantine_fraction: float = _opt(
        0.0,
        "share of clients that are malicious (chosen by the seed, listed in config.json)",
        PRIVACY,
        bounds="[0, 1)",
    )
    attack: str = _opt(
        "sign-flip",
        "what malicious clients do: send the negated update, noise of the update's scale, "
        "the update ×10, or train on flipped labels",
        PRIVACY,
    )
    # Data
    data: str = _opt(
        HUB_CIFAR10,
        "image classification data: a Hugging Face dataset id, a folder of HF parquet files, "
        "a cifar-10-batches-py folder, or train/ and test/ folders of class folders (ImageFolder) "
        "(default: $FEDSIM_DATA or uoft-cs/cifar10)",
        DATA,
        roles=(FIXED, NOT_COMPARED),  # compared by its content key instead
    )
    partition: str = _opt("iid", "how the training set is split", DATA, roles=(SPLITS,))
    alpha: float = _opt(
        0.5,
        "Dirichlet concentration (--partition dirichlet)",
        DATA,
        roles=(SPLITS,),
        bounds="(0, inf)",
        applies=("partition", "dirichlet"),
    )
    dirichlet_balance: bool = _opt(
        False,
        "NIID-Bench's balancing: a client holding more than its share of examples gets no "
        "more of the next label (flwr-datasets' self_balancing)",
        DATA,
        roles=(SPLITS,),
        applies=("partition", "dirichlet"),
    )
    min_partition_size: int = _opt(
        0,
        "redraw the Dirichlet split until every client holds at least this many examples",
        DATA,
        roles=(SPLITS,),
        bounds="[0, inf)",
        applies=("partition", "dirichlet"),
    )
    classes_per_client: int = _opt(
        2,
        "labels per client (--partition pathological)",
        DATA,
        roles=(SPLITS,),
        bounds="[1, inf)",
        applies=("partition", "pathological"),
    )
    shards_per_client: int = _opt(
        2,
        "label-sorted shards per client (--partition shard)",
        DATA,
        roles=(SPLITS,),
        bounds="[1, inf)",
        applies=("partition", "shard"),
    )
    partition_column: str = _opt(
        "",
        "the data's column naming each example's client (--partition natural: one client "
        "per value, as a writer or a hospital; --clients then comes from the data)",
        DATA,
        roles=(SPLITS,),
        applies=("partition", "natural"),
    )
    val_fraction: float = _opt(
        0.1,
        "share of each client's partition held out for its own evaluation",
        DATA,
        roles=(SPLITS,),
        bounds="[0, 1)",
    )
    normalize: str = _opt(
        "range",
        "how pixels become a model's inputs: range scales them to [-1, 1] (Flower's "
        "quickstart); train-split standardises each channel by the training split's "
        "mean and standard deviation",
        DATA,
    )
    # Local training
    model: str = _opt("cnn", "model to train", TRAINING)
    local_epochs: int = _opt(1, "local epochs per round", TRAINING, bounds="[1, inf)")
    batch_size: int = _opt(32, "local batch size", TRAINING, bounds="[1, inf)")
    lr: float = _opt(0.01, "client learning rate (SGD)", TRAINING, bounds="(0, inf)")
    momentum: float = _opt(0.9, "client SGD momentum", TRAINING, bounds="[0, 1)")
    weight_decay: float = _opt(0.0, "client SGD weight decay", TRAINING, bounds="[0, inf)")
    augment: bool = _opt(False, "random crop (padding 4) + horizontal flip on clients", TRAINING)
    vectorize: str = _opt(
        "auto",
        "train a bundle's clients at once (torch.func.vmap over their stacked weights): on, "
        "off (one after another: the numbers of fedsim before it), or auto: on where "
        "the clients train on a GPU, off on a CPU, where it measured slower",
        TRAINING,
        choices=VECTORIZE,
    )
    seed: int = _opt(
        0,
        "seed for partitions, init, shuffling and sampling (fedsim.ground.streams)",
        FEDERATION,
        roles=(SPLITS,),
        bounds=f"[0, {MAX_SEED}]",
    )
    # Resources and transport: how the simulation runs, never what it computes
    cpus_per_client: float = _opt(
        1.0, "CPUs reserved per client actor", RESOURCES, roles=(NOT_COMPARED,), bounds="(0, inf)"
    )
    gpus_per_client: float | None = _opt(
        None,
        "GPU share per client, e.g. 0.25 (default: 0 without CUDA; with GPUs, as many "
        "clients side by side on each as the CPUs allow)",
        RESOURCES,
        roles=(NOT_COMPARED,),
        bounds="[0, inf)",
        type=float,
    )
    clients_per_message: int | None = _opt(
        None,
        "virtual clients one engine message carries (default: auto; 1: one each)",
        RESOURCES,
        roles=(NOT_COMPARED,),
        bounds="[1, inf)",
        type=int,
    )
    ray_address: str = _opt(
        "",
        "attach to an existing Ray cluster (HOST:PORT or auto); default: a private one",
        RESOURCES,
        roles=(FIXED, NOT_COMPARED),
    )
    # Faults (fedsim.flower.client_app drops clients out; the loop counts failed rounds)
    client_failure_rate: float = _opt(
        0.0,
        "probability that a client's train call fails (simulated dropout)",
        FAULTS,
        bounds="[0, 1]",
    )
    max_failed_rounds: int = _opt(
        3,
        "stop after this many rounds in a row in which no update reached the server",
        FAULTS,
        bounds="[1, inf)",
    )
    round_timeout: float = _opt(
        3600.0,
        "seconds to wait for client replies before cutting them off",
        FAULTS,
        roles=(NOT_COMPARED,),
        bounds="(0, inf)",
    )
    # Outputs
    results_dir: str = _opt(
        "results",
        "parent folder of the run folders",
        OUTPUTS,
        roles=(FIXED, WHERE, NOT_COMPARED),
    )
    tensorboard: str = _opt(
        "",
        "write TensorBoard event files (config and every round's metrics) to this folder",
        OUTPUTS,
        roles=(FIXED, WHERE, NOT_COMPARED),
    )
    mlflow: str = _opt(
        "",
        "log the config and every round's metrics to MLflow: a local folder (file store) "
        "or a tracking server URI",
        OUTPUTS,
        roles=(FIXED, WHERE, NOT_COMPARED),
    )
    name: str = _opt(
        "",
        "run folder name (default: time and key settings)",
        OUTPUTS,
        roles=(FIXED, WHERE, NOT_COMPARED),
    )
    client_states: str = _opt(
        "keep",
        "once the run is complete, keep or remove its clients' memories "
        "(client_states.sqlite: SCAFFOLD's, FedDyn's); kept, it can train further",
        OUTPUTS,
        roles=(FIXED, WHERE, NOT_COMPARED),
    )
    # The chosen algorithm's own options, as it declares them (fedsim.runner.options)
    strategy_options: StrategyOptions = field(default_factory=StrategyOptions)

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        """config.json's `config`: every option, the algorithm's under strategy_options."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {**values, "strategy_options": dict(self.strategy_options)}

    def flat(self) -> dict[str, Any]:
        """Every option by name, the algorithm's beside the others (as options are given)."""
        values = self.as_dict()
        own = values.pop("strategy_options")
        return {**values, **own}

    @property
    def evaluates_on_clients(self) -> bool:
        return self.fraction_evaluate > 0 and self.val_fraction > 0

    @property
    def sampled_per_round(self) -> int:
        """How many clients a round samples to train (fedsim.simulation draws which)."""
        return sample_count(self.clients, self.fraction_fit)


def sample_count(clients: int, fraction: float) -> int:
    """How many of `clients` a fraction samples: at least one."""
    return min(clients, max(1, int(clients * fraction)))


def core_options() -> dict[str, Option]:
    """RunConfig's own options by name, in field order."""
    found = {}
    types_ = typing.get_type_hints(RunConfig)
    for f in dataclasses.fields(RunConfig):
        if "option" not in f.metadata:
            continue
        option: Option = f.metadata["option"]
        if not option.name:
            option.name = f.name
            option.type = option.type or _value_type(types_[f.name])
        found[f.name] = option
    return found


def _value_type(hint: Any) -> type:
    """An option's type, without the None of an optional one (`float | None` -> float)."""
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


def check_core(cfg: RunConfig) -> RunConfig:
    """Every RunConfig value against its option, and what no single option says: a GPU
    share Ray can give, a run name that makes a folder name."""
    for name, option in core_options().items():
        option.check(getattr(cfg, name))
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


def _is_plain_name(name: str) -> bool:
    return (
        os.sep not in name
        and "/" not in name
        and not name.startswith(".")
        and name.strip() == name
        and name != ""
    )


def flag(name: str) -> str:
    """The command-line spelling of an option: clients -> --clients."""
    return "--" + name.replace("_", "-")
