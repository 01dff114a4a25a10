"""The runs of a reproduction's grid, as its report script tabulates them
(experiments/niid_bench_report.py, experiments/fedrep_report.py): those of an
experiment's results folder that are cells of the grid as its TOML defines it now, and
those whose rounds.csv a report already committed to docs/results (so a table
regenerates from the repository alone), grouped by cell, one run per seed.

A run is a dict: `cell` (a tuple naming the cell, the report's), `seed`, `rounds` (its
rounds.csv) and `dir` (where its files are).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from fedsim.front import sweep
from fedsim.front.experiment import changed_settings
from fedsim.ground.files import CONFIG_JSON, ROUNDS_CSV


def collect(folder: Path, grid_file: Path, cell: Callable[[dict], tuple]) -> list[dict]:
    """Each run of the experiment folder that is a cell of the grid as `grid_file`
    defines it now (`cell(config)` names it). Seeds beyond the file's (`--seed 1,2`)
    count; a run made with other settings (an older grid) is said and left out."""
    configs = {
        run_dir: json.loads((run_dir / CONFIG_JSON).read_text())["config"]
        for run_dir in sorted(p for p in folder.iterdir() if (p / CONFIG_JSON).is_file())
    }
    seeds = sorted({0, *(config["seed"] for config in configs.values())})
    grid = {cfg.name: cfg for cfg in sweep.plan_from(str(grid_file), {"seed": seeds}).runs}
    runs = []
    for run_dir, config in configs.items():
        if run_dir.name not in grid:
            print(f"skipped {run_dir}: not a run of {grid_file.name}")
            continue
        if changed := changed_settings(grid[run_dir.name], config):
            print(f"skipped {run_dir}: {'; '.join(changed)}")
            continue
        if not (run_dir / ROUNDS_CSV).exists():
            continue
        rounds = pd.read_csv(run_dir / ROUNDS_CSV)
        if len(rounds) < 2:
            continue
        runs.append(
            {"cell": cell(config), "seed": config["seed"], "rounds": rounds, "dir": run_dir}
        )
    return runs


def committed(folder: Path, cell: Callable[[str], tuple]) -> list[dict]:
    """The runs whose rounds.csv a report copied to `folder`/<cell>-s<seed>/ (each was
    checked against the grid when it was copied); `cell` reads the cell from <cell>."""
    runs = []
    for path in sorted(folder.glob("*/rounds.csv")):
        name, _, seed = path.parent.name.rpartition("-")
        runs.append(
            {
                "cell": cell(name),
                "seed": int(seed.removeprefix("s")),
                "rounds": pd.read_csv(path),
                "dir": path.parent,
            }
        )
    return runs


def copy_rounds(cells: dict[tuple, list[dict]], cell_dir: Callable[[tuple, int], Path]) -> None:
    """Each run's rounds.csv to `cell_dir(cell, seed)`, unless it is there already."""
    for run in (run for members in cells.values() for run in members):
        destination = cell_dir(run["cell"], run["seed"])
        if run["dir"] != destination:
            destination.mkdir(parents=True, exist_ok=True)
            (destination / ROUNDS_CSV).write_bytes((run["dir"] / ROUNDS_CSV).read_bytes())


def write_table(table: Path, columns: tuple[str, ...], rows: list[dict]) -> None:
    """The report's CSV (a row per cell), each row also printed."""
    table.parent.mkdir(parents=True, exist_ok=True)
    with open(table, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    for row in rows:
        print(", ".join(f"{k} {row[k]}" for k in columns))


def cells_of(runs: list[dict]) -> dict[tuple, list[dict]]:
    """The runs by cell, one per seed (the one with more rounds: a results folder's run
    over its committed copy once it has caught up), a seed still running left out."""
    latest: dict[tuple, dict] = {}
    for run in runs:
        key = (*run["cell"], run["seed"])
        if key not in latest or len(run["rounds"]) >= len(latest[key]["rounds"]):
            latest[key] = run
    cells: dict[tuple, list[dict]] = {}
    for key, run in sorted(latest.items()):
        cells.setdefault(key[:-1], []).append(run)
    for members in cells.values():
        # a seed still running would pull the cell's mean back to its round: wait for it
        most = max(len(m["rounds"]) for m in members)
        for m in [m for m in members if len(m["rounds"]) < most]:
            print(f"left out {m['dir']}: {len(m['rounds']) - 1} of the cell's {most - 1} rounds")
            members.remove(m)
    return cells
