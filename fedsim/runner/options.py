"""Every option a run takes, in one catalog: RunConfig's own (fedsim.ground.config) and
each registered algorithm's (declared on its class, fedsim.algorithms.base). The
command line, experiment files, the Flower App's run config, the summary and the docs
table read it; nothing else lists options.

Also here: which options apply to a run (alpha only to a Dirichlet split, proximal_mu
only to FedProx), validation (every value, then the algorithm's own checks and what
--dp needs), and the RunConfig that a set of options (by name, as they are given) makes.
Choices come from the dispatch tables they select from (CHOICES); `--model` and
`--strategy` may also name the user's own code, which joins its table once checked
(`admit`), so that the catalog, --help, sweeps and the summary treat it as built in.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

from fedsim import algorithms
from fedsim.algorithms import attacks, privacy
from fedsim.ground import imports
from fedsim.ground.choices import CLIENT_OPTIMIZERS, DP_MODES, RAY_RESOURCE_UNIT
from fedsim.ground.config import RunConfig, core_options
from fedsim.ground.errors import ConfigError
from fedsim.ground.option import COUNTED, SYNCHRONOUS, Option, StrategyOptions, flag
from fedsim.learning import data, models, partition
from fedsim.simulation import client_states

MAX_NAME = 120  # characters of a run name: room for file names under any file system's limit

# Options whose values select from a dispatch table: the table's keys are the choices
CHOICES: dict[str, Callable[[], tuple[str, ...]]] = {
    "strategy": lambda: tuple(algorithms.ALGORITHMS),
    "partition": lambda: tuple(partition.PARTITIONERS),
    "model": lambda: tuple(models.MODELS),
    "dp": lambda: DP_MODES,
    "attack": lambda: attacks.ATTACKS,
    "client_states": lambda: client_states.WHEN_COMPLETE,
    "normalize": lambda: data.NORMALIZATIONS,
    "client_optimizer": lambda: CLIENT_OPTIMIZERS,
}

# Options whose value may be the user's own `module:attribute`: the table it joins, and
# the check that returns what it names (an Algorithm subclass; a callable: the model is
# tried on the data later)
USER_CODE: dict[str, tuple[Callable[[], dict[str, str]], Callable[[str], Any]]] = {
    "strategy": (lambda: algorithms.ALGORITHMS, algorithms.user_algorithm),
    "model": (lambda: models.MODELS, models.check_factory),
}


def admit(name: str, value: Any) -> None:
    """If `value` names the user's own code for option `name`, check it (ConfigError,
    one line) and register it under its own name; the catalog then holds its options."""
    if name not in USER_CODE or not imports.is_path(value):
        return
    table, check = USER_CODE[name]
    if value in table():
        return
    found = check(value)
    if name == "strategy":
        own = found.options()
        if clash := [option.name for option in own if option.name in core_options()]:
            raise ConfigError(
                "--strategy",
                f"{value}'s option {clash[0]!r} is one of fedsim's own; give it another name",
            )
    table()[value] = value
    every.cache_clear()
    owners.cache_clear()


@functools.cache
def every() -> dict[str, Option]:
    """Every option by name: RunConfig's in field order, then each algorithm's (an
    option several algorithms declare, such as server_lr, once)."""
    found = dict(core_options())
    for name in algorithms.ALGORITHMS:
        for option in algorithms.algorithm_class(name).options():
            found.setdefault(option.name, option)
    return found


@functools.cache
def owners() -> dict[str, tuple[str, ...]]:
    """Algorithm option name -> the algorithms that declare it, in registry order."""
    found: dict[str, list[str]] = {}
    for name in algorithms.ALGORITHMS:
        for option in algorithms.algorithm_class(name).options():
            found.setdefault(option.name, []).append(name)
    return {option: tuple(names) for option, names in found.items()}


def choices(name: str) -> tuple[Any, ...] | None:
    """The values an option may take, where a dispatch table or the option says."""
    if name in CHOICES:
        return CHOICES[name]()
    return every()[name].choices


def with_role(role: str) -> tuple[str, ...]:
    """The options tagged with `role`, in catalog order."""
    return tuple(name for name, option in every().items() if role in option.roles)


def shown(name: str, value: Any) -> str:
    """An option's value as help text and run labels say it (None: `auto` or `none`)."""
    return every()[name].shown(value)


def applies(cfg: RunConfig, name: str) -> bool:
    """Whether option `name` can change what `cfg` computes: alpha only a Dirichlet
    split, deadline only rounds (not FedBuff), an algorithm's option only that
    algorithm's runs."""
    if name not in core_options():
        return name in cfg.strategy_options
    rule = every()[name].applies
    if rule is None:
        return True
    if rule == SYNCHRONOUS:
        return not algorithms.algorithm_class(cfg.strategy).asynchronous
    if rule == COUNTED:
        return cfg.partition != partition.NATURAL and not cfg.only_group
    return getattr(cfg, rule[0]) in rule[1:]


def make_config(**options: Any) -> RunConfig:
    """The validated RunConfig that options given by name make (as the command line,
    an experiment file or a Python caller gives them): RunConfig's own, and those of the
    chosen algorithm (at their defaults where not given). Another algorithm's options
    are checked and left out: they would change nothing."""
    for name in USER_CODE:
        admit(name, options.get(name))
    known = every()
    if unknown := [name for name in options if name not in known]:
        raise ConfigError(flag(unknown[0]), "is not a fedsim option (see simulate.py --help)")
    for name, value in options.items():  # every value given, whether it applies or not
        if name not in core_options():
            check_value(name, value)
    core = {name: value for name, value in options.items() if name in core_options()}
    strategy = core.get("strategy", RunConfig.strategy)
    _check_choice("strategy", strategy)
    declared = algorithms.algorithm_class(strategy).options()
    values = {option.name: options.get(option.name, option.default) for option in declared}
    return validate(RunConfig(**core, strategy_options=StrategyOptions(values)))


def validate(cfg: RunConfig) -> RunConfig:
    """Every value, then what the algorithm and --dp need of the settings together;
    raise on the first bad one."""
    for name in USER_CODE:
        admit(name, getattr(cfg, name))
    check_core(cfg)
    for name in CHOICES:
        _check_choice(name, getattr(cfg, name))
    if cfg.local_steps is not None and cfg.local_epochs != 1:
        raise ConfigError(
            flag("local_steps"),
            f"counts local work in batches; --local-epochs {cfg.local_epochs} counts it in "
            "epochs: give one of them",
        )
    algorithm = algorithms.build(cfg)
    declared = {option.name: option for option in type(algorithm).options()}
    if extra := sorted(set(cfg.strategy_options) - set(declared)):
        raise ConfigError(flag(extra[0]), f"is not an option of {cfg.strategy}")
    for name, option in declared.items():
        option.check(cfg.strategy_options.get(name, option.default))
    algorithm.check()
    privacy.check(cfg)
    return cfg


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


def check_value(name: str, value: Any) -> None:
    """One option's value on its own: type, bounds and choices."""
    every()[name].check(value)
    _check_choice(name, value)


def _check_choice(name: str, value: Any) -> None:
    allowed = choices(name)
    if allowed is not None and value not in allowed:
        raise ConfigError(
            flag(name), f"unknown value {value!r}, choose from {', '.join(map(str, allowed))}"
        )


def from_document(stored: dict[str, Any]) -> RunConfig:
    """The RunConfig that config.json's `config` holds (raises ConfigError if it holds
    no valid one). A config.json written before algorithms declared their options holds
    them among the others, every algorithm's: the run's own algorithm's are taken."""
    if "strategy_options" in stored:
        core = {name: value for name, value in stored.items() if name in core_options()}
        options = StrategyOptions(stored["strategy_options"])
        return validate(RunConfig(**core, strategy_options=options))
    strategy = stored.get("strategy", RunConfig.strategy)
    admit("strategy", strategy)
    _check_choice("strategy", strategy)
    own = {option.name for option in algorithms.algorithm_class(strategy).options()}
    return make_config(**{k: v for k, v in stored.items() if k in core_options() or k in own})
