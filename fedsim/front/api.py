"""fedsim as a library: a run or a grid from Python, with simulate.py's options,
validation, numbers and files.

    import fedsim
    result = fedsim.run(clients=20, rounds=5, partition="dirichlet", alpha=0.3)
    result.rounds.central_accuracy          # rounds.csv as a DataFrame
    summary = fedsim.sweep(clients=[10, 20], strategy=["fedavg", "scaffold"])

Options are simulate.py's, by name with `_` for `-` (`fraction_fit=0.1`; the command
line's `fraction-fit` is taken too); `None` is `auto`; NumPy numbers are numbers.
`model` and `strategy` also take the factory or the Algorithm class itself: named by
its module, or, defined in a notebook's cell, kept by value (fedsim.ground.by_value).
The command line reads its arguments into the same options and goes through the same
functions below this module (fedsim.front.sweep, fedsim.runner), so a call and a
command with the same options make the same folders and the same numbers.

Nothing here ends the process: a bad option raises ConfigError (the CLI's `error:`
line, as its message); a run that ends for a reason raises RunEnded (RunAborted,
Diverged; its folder says why); Ctrl-C stops the run at once, keeps its completed
rounds (status `interrupted`, `fedsim.resume` goes on) and raises KeyboardInterrupt,
further Ctrl-Cs being ignored until the run is wound down. Each call starts Ray for its
runs and stops it after, so calls follow one another in one process (a notebook's),
after an interrupt too.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from fedsim.front import sweep as grids
from fedsim.ground import by_value, interrupts
from fedsim.ground.errors import ConfigError, RunEnded
from fedsim.ground.files import CLIENTS_CSV, CONFIG_JSON, MODEL, ROUNDS_CSV, SUMMARY_CSV
from fedsim.ground.option import flag
from fedsim.runner import options as catalog

if TYPE_CHECKING:
    from torch import nn


class RunsNotComplete(UserWarning):
    """`sweep`: some of its runs ended for a reason (their rows say which and why)."""


# Said on every sweep that has such runs, not only the first time a line of code calls it
# (Python's default shows a warning once per place): a rerun in a notebook warns again
warnings.filterwarnings("always", category=RunsNotComplete)


@dataclass(frozen=True)
class Result:
    """A run's folder, and what is in it (read when asked, so always what is on disk)."""

    run_dir: Path

    @property
    def rounds(self) -> pd.DataFrame:
        """rounds.csv: a row per round (docs/results.md)."""
        return pd.read_csv(self.run_dir / ROUNDS_CSV)

    @property
    def clients(self) -> pd.DataFrame:
        """clients.csv: a row per client per phase per round."""
        return pd.read_csv(self.run_dir / CLIENTS_CSV)

    @property
    def document(self) -> dict[str, Any]:
        """config.json whole: the options, versions, timings and the status."""
        return json.loads((self.run_dir / CONFIG_JSON).read_text())

    @property
    def config(self) -> dict[str, Any]:
        """The run's options, as config.json holds them."""
        return self.document["config"]

    @property
    def status(self) -> str:
        return self.document["status"]

    @property
    def model(self) -> nn.Module:
        """The final global model (model.pt), on the CPU, in eval mode."""
        import torch

        from fedsim.learning import models, tasks

        task = tasks.described(self.document.get("data_shape"))
        model = models.build_model(self.config["model"], task=task)
        model.load_state_dict(torch.load(self.run_dir / MODEL, weights_only=True))
        return model.eval()


@interrupts.holding
def run(**options: Any) -> Result:
    """One simulation with these options; its Result once it is complete. `model` and
    `strategy` may be the factory or the Algorithm class itself, if it is defined in a
    module (the client processes import it by name)."""
    options = {name: _named(name, _plain(name, value)) for name, value in _spelled(options).items()}
    if listed := [name for name, value in options.items() if _is_list(value)]:
        raise ConfigError(
            flag(listed[0]), "takes one value in fedsim.run (fedsim.sweep takes lists)"
        )
    (cfg,) = grids.expand([{name: [value] for name, value in options.items()}])
    from fedsim.runner import lifecycle

    return Result(lifecycle.run(cfg, time.perf_counter()))


@interrupts.holding
def resume(
    run_dir: str | Path, rounds: int | None = None, accept_changed_code: bool = False
) -> Result:
    """Go on with an interrupted run (with `rounds`: extend a complete one). The run's
    own model and algorithm modules must be unchanged since it began, unless
    `accept_changed_code` (recorded in its config.json)."""
    if not isinstance(run_dir, str | os.PathLike) or not str(run_dir):
        raise ConfigError("--resume", f"takes a run folder, got {run_dir!r}")
    rounds = None if rounds is None else _plain("rounds", rounds)
    folder = Path(run_dir).expanduser()
    from fedsim.runner import lifecycle

    return Result(
        lifecycle.resume(
            folder, rounds, time.perf_counter(), accept_changed_code=accept_changed_code
        )
    )


@interrupts.holding
def sweep(experiment: str | Path | None = None, **options: Any) -> pd.DataFrame:
    """Every combination of the options given as lists (over an experiment file's grid,
    if one is named), into one experiment folder; its summary.csv, one row per run,
    with the folder as `.attrs["folder"]`. Runs already complete are not run again. A
    run that ends for a reason does not stop the others: its row says so, and a
    warning names it."""
    given = {
        name: [_named(name, _plain(name, one)) for one in (v if _is_list(v) else [v])]
        for name, v in _spelled(options).items()
    }
    if empty := [name for name, values in given.items() if not values]:
        raise ConfigError(flag(empty[0]), "takes at least one value (an empty list runs nothing)")
    if experiment is not None:
        path = Path(experiment)
        planned = grids.plan(grids.load_experiment(path), given, path.stem)
    else:
        planned = grids.plan([{}], given, None)
    from fedsim.front.experiment import run_experiment

    try:
        run_experiment(planned)
    except RunEnded as error:
        warnings.warn(str(error), RunsNotComplete, stacklevel=2)
    summary = pd.read_csv(planned.folder / SUMMARY_CSV)
    summary.attrs["folder"] = planned.folder
    return summary


def option_names() -> list[str]:
    """Every option `run` and `sweep` take (simulate.py --help describes them)."""
    return list(catalog.every())


def _named(name: str, value: Any) -> Any:
    """A model factory or an Algorithm class given as itself: its `module:name`, or,
    for code no other process can import by name (a notebook's), the name it is kept
    under by value (fedsim.ground.by_value)."""
    if name not in catalog.USER_CODE or not callable(value):
        return value
    module, qualname = getattr(value, "__module__", None), getattr(value, "__qualname__", "")
    if module in (None, "__main__") or "<" in qualname:
        return by_value.keep(value)
    return f"{module}:{qualname}"


def _spelled(options: dict[str, Any]) -> dict[str, Any]:
    """Options by their Python names: `fraction-fit` or `--fraction-fit`, as the
    command line spells them, is `fraction_fit`; the same option twice is an error."""
    found: dict[str, Any] = {}
    for given, value in options.items():
        name = given.removeprefix("--").replace("-", "_")
        if name in found:
            raise ConfigError(flag(name), f"is given twice ({given!r} and another spelling)")
        found[name] = value
    return found


def _plain(name: str, value: Any) -> Any:
    """A NumPy scalar (np.int64(4), np.float32(0.1), np.bool_) as the Python number it
    holds, which is what every option checks for; anything else as it is."""
    if isinstance(value, np.generic) and value.dtype.kind in "biuf":
        return value.item()
    if isinstance(value, np.ndarray):
        return [_plain(name, one) for one in value.tolist()]
    return value


def _is_list(value: Any) -> bool:
    return isinstance(value, Sequence | set) and not isinstance(value, str | bytes)
