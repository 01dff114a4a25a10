"""The machinery of an option: what a setting declares (`Option`: default, help, typed
bounds, roles, group, when it applies), how a value is checked against it, and how the
command line spells it. fedsim.ground.config declares RunConfig's options with it;
each algorithm declares its own on its class (fedsim.algorithms.base)."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Self

from fedsim.ground.errors import ConfigError

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
ALGORITHM = "algorithm"  # an algorithm's own options are in this group too
CLOCK = "simulated clock"
PRIVACY = "privacy and attacks"
FAULTS = "faults"
RESOURCES = "resources"
OUTPUTS = "outputs"
GROUPS = (FEDERATION, DATA, TRAINING, ALGORITHM, CLOCK, PRIVACY, FAULTS, RESOURCES, OUTPUTS)

# `applies` rules that no option value states: the algorithm runs synchronous rounds;
# the client count is --clients' (not the data's groups: --partition natural, --only-group)
SYNCHRONOUS = "synchronous"
COUNTED = "client count given"


@dataclass(frozen=True)
class Bounds:
    """The values a number may take: from `low` to `high`, each end included unless
    open (an infinite end is never included)."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def __str__(self) -> str:
        """As an error message says it: `≥ 1`, `> 0`, `in (0, 1]`."""
        if self.high == math.inf:
            return f"{'>' if self.low_open else '≥'} {_number(self.low)}"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"in {left}{_number(self.low)}, {_number(self.high)}{right}"

    @classmethod
    def parse(cls, text: str) -> Bounds:
        """A user algorithm's bounds written as an interval, `(0, 1]` or `[1, inf)`."""
        low, high = (part.strip() for part in text.strip()[1:-1].split(","))
        return cls(float(low), float(high), text.strip()[0] == "(", text.strip()[-1] == ")")


def _number(value: float) -> str:
    """An end as it was declared: an integer whole (2³²−1), a float short (1e+06)."""
    return str(value) if isinstance(value, int) else f"{value:g}"


def at_least(low: float) -> Bounds:
    return Bounds(low)


def greater_than(low: float) -> Bounds:
    return Bounds(low, low_open=True)


@dataclass
class Option:
    """One setting a run takes: its default, help, bounds or choices, roles, group and
    when it applies (None: always; (option, *values): when that option takes one of the
    values; SYNCHRONOUS: with an algorithm that runs rounds; COUNTED: where --clients
    counts the clients).

    RunConfig's own options are its fields (declared with `_opt`). An algorithm declares
    its options as class attributes (fedsim.algorithms.base); there an Option is a
    descriptor: `self.proximal_mu` reads the run's value."""

    default: Any
    help: str
    bounds: Bounds | str | None = None  # a string: an interval, `(0, 1]` (Bounds.parse)
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
        if isinstance(self.bounds, str):
            self.bounds = Bounds.parse(self.bounds)

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
        if self.bounds is not None and value not in self.bounds:
            raise ConfigError(option, f"got {value}, must be {self.bounds}")
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


class Declared:
    """What a frozen dataclass of declared options (RunConfig) does with its values:
    a copy with some changed, and every value by name for config.json, the summary,
    sweeps and trackers. The chosen algorithm's own options are in its field
    `strategy_options` (a StrategyOptions)."""

    def replace(self, **changes: Any) -> Self:
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        """config.json's `config`: every option, the algorithm's under strategy_options."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {**values, "strategy_options": dict(values["strategy_options"])}

    def flat(self) -> dict[str, Any]:
        """Every option by name, the algorithm's beside the others (as options are given)."""
        values = self.as_dict()
        own = values.pop("strategy_options")
        return {**values, **own}


def declare(default: Any, help: str, group: str, roles: tuple[str, ...] = (), **extra: Any) -> Any:
    option = Option(default, help, roles=roles, group=group, **extra)
    return field(default=default, metadata={"option": option})


def flag(name: str) -> str:
    """The command-line spelling of an option: clients -> --clients."""
    return "--" + name.replace("_", "-")


def declared_options(config: type) -> dict[str, Option]:
    """The options a dataclass declares (its fields made with `declare`), by name, in
    field order, each named and typed by its field the first time it is asked for."""
    found = {}
    hints = typing.get_type_hints(config)
    for f in dataclasses.fields(config):
        if "option" not in f.metadata:
            continue
        option: Option = f.metadata["option"]
        if not option.name:
            option.name = f.name
            option.type = option.type or _value_type(hints[f.name])
        found[f.name] = option
    return found


def _value_type(hint: Any) -> type:
    """An option's type, without the None of an optional one (`float | None` -> float)."""
    if isinstance(hint, types.UnionType):
        return next(t for t in typing.get_args(hint) if t is not type(None))
    return hint
