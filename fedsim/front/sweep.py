"""Experiments as grids: comma lists on the command line, or a TOML file of them.

A grid maps options to the values to sweep; the experiment is every combination, each
run named from the settings the experiment sweeps (`clients-8_dirichlet_seed-1`), so
that running the same sweep again names the same run folders (see fedsim.front.experiment).
"""

from __future__ import annotations

import difflib
import itertools
import math
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedsim.ground.config import RunConfig, default_data
from fedsim.ground.errors import ConfigError
from fedsim.ground.option import FIXED
from fedsim.runner import options

Grid = dict[str, list[Any]]  # option -> the values to sweep (one value: fixed)

EXPERIMENT = "--experiment"
VARIANT = "variant"  # [[variant]] tables: sub-grids under the file's top-level settings
# Flower's own spellings (pyproject's [tool.flwr.app.config], federation options)
ALIASES = {
    "num-server-rounds": "rounds",
    "num-supernodes": "clients",
    "fraction-train": "fraction_fit",
    "seeds": "seed",
}
MAX_RUNS = 10_000  # runs one experiment may hold


def one_value() -> tuple[str, ...]:
    """The options that are the same for every run of an experiment."""
    return options.with_role(FIXED)


def default(name: str) -> Any:
    return default_data() if name == "data" else options.every()[name].default


# ---- the experiment file ---------------------------------------------------------------


def _field_name(key: str, path: Path, seen: dict[str, str]) -> str:
    name = ALIASES.get(key, key.replace("-", "_"))
    catalog = options.every()
    if name not in catalog:
        known = sorted([*catalog, *ALIASES])
        close = difflib.get_close_matches(key.replace("-", "_"), known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(
            EXPERIMENT,
            f"{path}: unknown key {key!r}, {hint}keys are fedsim's options "
            f"({', '.join(sorted(catalog))}), '{VARIANT}' or {', '.join(ALIASES)}",
        )
    if name in seen:
        raise ConfigError(EXPERIMENT, f"{path}: {key!r} and {seen[name]!r} set the same option")
    seen[name] = key
    return name


def _typed(name: str, key: str, value: Any, path: Path) -> Any:
    """A TOML value as the option's type: ints are numbers too, nothing else converts."""
    option = options.every()[name]
    kind = option.type
    accepted = (int, float) if kind is float else (kind,)
    if isinstance(value, bool) is not (kind is bool) or not isinstance(value, accepted):
        noun = {int: "an integer", float: "a number", bool: "true or false"}.get(kind, "a string")
        raise ConfigError(
            EXPERIMENT,
            f"{path}: {key} = {value!r} has the wrong type, must be {noun} or a list of them",
        )
    value = kind(value)
    try:
        options.check_value(name, value)
    except ConfigError as error:
        raise ConfigError(EXPERIMENT, f"{path}: {key} = {value!r}: {error}") from None
    return value


def _grid(table: dict[str, Any], path: Path) -> Grid:
    grid: Grid = {}
    seen: dict[str, str] = {}
    for key, value in table.items():
        name = _field_name(key, path, seen)
        values = value if isinstance(value, list) else [value]
        if not values:
            raise ConfigError(EXPERIMENT, f"{path}: {key} is an empty list, give one value or more")
        if len(values) > 1 and name in one_value():
            raise ConfigError(EXPERIMENT, f"{path}: {key} takes one value, not a list")
        grid[name] = [_typed(name, key, v, path) for v in values]
    return grid


def load_experiment(path: Path) -> list[Grid]:
    """The file's grids: its top-level settings, under each [[variant]] if it has any
    (NIID-Bench's partitions are variants: IID, Dirichlet(0.5), 1-3 classes each)."""
    try:
        document = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(EXPERIMENT, f"{path} does not exist, give a .toml file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(EXPERIMENT, f"cannot read {path} ({error}), give a .toml file") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(EXPERIMENT, f"{path} is not valid TOML: {error}") from None
    variants = document.pop(VARIANT, [{}])
    if not (isinstance(variants, list) and variants and all(isinstance(v, dict) for v in variants)):
        raise ConfigError(EXPERIMENT, f"{path}: '{VARIANT}' must be [[{VARIANT}]] tables")
    base = _grid(document, path)
    grids = []
    for variant in variants:
        grid = _grid(variant, path)
        if fixed := [name for name in grid if name in one_value()]:
            raise ConfigError(
                EXPERIMENT, f"{path}: {fixed[0]} cannot vary by [[{VARIANT}]], set it at the top"
            )
        grids.append({**base, **grid})
    return grids


# ---- the grid as runs ------------------------------------------------------------------


def size(grids: Sequence[Grid]) -> int:
    """How many combinations the grids hold (before equal runs are merged)."""
    return sum(math.prod(len(values) for values in grid.values()) for grid in grids)


def _check_size(grids: Sequence[Grid]) -> None:
    if (count := size(grids)) > MAX_RUNS:
        raise ConfigError(
            "grid", f"holds {count:,} runs, more than {MAX_RUNS:,} in one experiment; sweep fewer"
        )


def expand(grids: Sequence[Grid]) -> list[RunConfig]:
    """One validated RunConfig per combination of each grid's values (defaults fill the
    options a grid leaves out), grid after grid; a grid of more than MAX_RUNS is refused
    before any is made (a product of long lists would plan for minutes)."""
    _check_size(grids)
    configs = []
    for grid in grids:
        chosen = {"data": [default("data")], **grid}
        configs += [
            options.make_config(**dict(zip(chosen, combo, strict=True)))
            for combo in itertools.product(*chosen.values())
        ]
    return configs


def swept(grids: Sequence[Grid]) -> list[str]:
    """The options that take more than one value among the runs they apply to, in
    catalog order (alpha set for every Dirichlet variant alike is not swept)."""
    configs = [(cfg, cfg.flat()) for cfg in expand(grids)]
    return [
        name
        for name in options.every()
        if len({values.get(name) for cfg, values in configs if options.applies(cfg, name)}) > 1
    ]


def run_label(cfg: RunConfig, names: Sequence[str]) -> str:
    """A run's folder name: its value of each swept option that applies to it (no alpha
    for an IID run), choices bare (`fedprox`), others as `clients-8`."""
    values = cfg.flat()
    parts = [
        options.shown(name, values[name])
        if name in options.CHOICES
        else f"{name.replace('_', '-')}-{options.shown(name, values[name])}"
        for name in names
        if options.applies(cfg, name)
    ]
    return "_".join(parts)


@dataclass(frozen=True)
class Experiment:
    folder: Path
    runs: tuple[RunConfig, ...]  # named, results_dir = folder


def plan(file_grids: Sequence[Grid], given: Grid, default_name: str | None) -> Experiment:
    """The runs of an experiment: the file's grids with the command line's options over
    them. Runs are named from what the file (or a command-line list) sweeps, so narrowing
    a sweep on the command line (`--partition iid`) keeps the names of the full grid."""
    grids = _narrow(file_grids, given)
    _check_size(grids)
    varied = {*swept(file_grids), "seed", *(n for n, values in given.items() if len(values) > 1)}
    fixed = one_value()
    labelled = [name for name in options.every() if name in varied and name not in fixed]
    name = grids[0].get("name", [""])[0] or default_name or _sweep_name(given)
    parent = Path(grids[0].get("results_dir", [default("results_dir")])[0])
    folder = parent / options.make_config(name=name).name
    runs: dict[str, RunConfig] = {}
    for cfg in expand([{**grid, "name": [""], "results_dir": [str(folder)]} for grid in grids]):
        label = run_label(cfg, labelled)
        runs.setdefault(label, cfg.replace(name=label))  # same label: differs in nothing used
    return Experiment(folder=folder, runs=tuple(runs.values()))


def _narrow(file_grids: Sequence[Grid], given: Grid) -> list[Grid]:
    """The file's grids under the command line's options. An option that some grid
    sweeps or sets selects: `--partition dirichlet` keeps the grids that hold Dirichlet,
    with the settings they pair with it (NIID-Bench's balancing, its FedProx mu), and
    only that value of their list. An option with a value no grid holds overrides every
    grid (`--rounds 2`, or `--seed 0,1` over a file's `seeds = [0]`: selecting would
    drop seed 1 without a word)."""
    grids = list(file_grids)
    for name, values in given.items():
        held = {value for grid in grids for value in grid.get(name, ())}
        narrowing = set(values) <= held
        grids = [
            {**grid, name: [v for v in values if v in grid[name]]}
            if narrowing and _holds(grid, name, values)
            else {**grid, name: values}
            for grid in grids
            if not (narrowing and name in grid and not _holds(grid, name, values))
        ]
    return grids


def _holds(grid: Grid, name: str, values: list[Any]) -> bool:
    return name in grid and bool(set(grid[name]) & set(values))


def _sweep_name(given: Grid) -> str:
    """`sweep_clients-2-4-8`: the options the command line sweeps, with their values (a
    long list by its length, `seed-100-values`, so that the name stays a folder name)."""
    parts = ["sweep"]
    for name, values in given.items():
        if len(values) > 1:
            shown_values = [options.shown(name, v) for v in values]
            listed = shown_values if len(values) <= 4 else [f"{len(values)}", "values"]
            parts.append("-".join([name.replace("_", "-"), *listed]))
    return "_".join(parts)


def plan_from(experiment_file: str | None, given: Grid) -> Experiment | None:
    """What a command line asks for: an experiment (a TOML file, or options given as
    lists), or None for a single run."""
    if experiment_file:
        path = Path(experiment_file)
        return plan(load_experiment(path), given, path.stem)
    if any(len(values) > 1 for values in given.values()):
        return plan([{}], given, None)
    return None
