"""An experiment's plots, drawn from its CSVs alone: summary.csv, each run's rounds.csv
and label_counts.csv. `simulate.py --plot results/<experiment>` redraws them anywhere.

Runs that differ only in their seed are drawn as one line (the mean) with the seeds'
spread shaded; client counts are the lines, every other swept setting gets its own panel.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on a simulation machine
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.ticker import MaxNLocator

from fedsim.front.summary import (
    ROUNDS_COLUMNS,
    completed_rounds,
    read_csv,
    run_folders,
    setting_columns,
    summarize,
    write_summary,
)
from fedsim.ground.errors import ConfigError
from fedsim.ground.files import CLIENTS_CSV, LABEL_COUNTS_CSV, ROUNDS_CSV

PARTITION_SETTINGS = ("partition", "alpha", "classes_per_client", "shards_per_client")
PLOTS = (
    "accuracy_vs_round.png",
    "final_accuracy_vs_clients.png",
    "seconds_per_round_vs_clients.png",
    "label_distribution.png",
    "client_accuracy_by_round.png",
    "accuracy_vs_megabytes.png",
    "accuracy_vs_sim_hours.png",
)
BANDS = ((10, 90), (25, 75))  # percentile bands of the clients' accuracies

Group = tuple[str, pd.DataFrame]


def _groups(frame: pd.DataFrame, keys: list[str]) -> list[Group]:
    """Rows split by the values of `keys`, each with a label such as `partition iid`."""
    if not keys:
        return [("", frame)]
    groups = []
    for values, rows in frame.groupby(keys, dropna=False, sort=False):
        pairs = zip(keys, values if isinstance(values, tuple) else (values,), strict=True)
        groups.append((", ".join(f"{k} {v}" for k, v in pairs if not pd.isna(v)), rows))
    return groups


def _layout(summary: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(panel keys, line keys): a line per client count when client counts vary, else
    a line per combination of the other swept settings."""
    others = [c for c in setting_columns(summary) if c not in ("clients", "seed")]
    if summary["clients"].nunique() > 1:
        return others, ["clients"]
    return [], others


def _panels(count: int, width: float = 5.0) -> tuple[plt.Figure, list[Axes]]:
    columns = min(count, 3)
    rows = math.ceil(count / columns)
    figure, axes = plt.subplots(
        rows, columns, figsize=(width * columns, 4 * rows), squeeze=False, sharey=True
    )
    for extra in axes.flat[count:]:
        extra.set_visible(False)
    return figure, list(axes.flat[:count])


def _save(figure: plt.Figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=110, bbox_inches="tight")  # legends may sit outside the axes
    plt.close(figure)
    return path


def _curve(path: Path, x: str, column: str) -> pd.Series | None:
    """One run's `column` (an accuracy) by round, or by simulated hours (None without
    either)."""
    frame = read_csv(path, ROUNDS_COLUMNS) if path.exists() else pd.DataFrame()
    if x not in frame or column not in frame:
        return None
    if x == "round":
        return frame.set_index("round")[column]
    curve = frame.set_index(frame["sim_clock"] / 3600)[column]
    return curve[~curve.index.duplicated(keep="last")]  # rows that took no simulated time


def _accuracy_curves(
    folder: Path, runs: pd.DataFrame, x: str = "round", column: str = "central_accuracy"
) -> pd.DataFrame:
    """`column` (central accuracy; a personal run's personal_accuracy) by `x` (round or
    sim_clock), a column per run (seed). On the simulated clock runs report at
    different times: each holds its accuracy from one row to its next, up to its last."""
    curves = {run: _curve(folder / run / ROUNDS_CSV, x, column) for run in runs["run"]}
    found = [curve.rename(run) for run, curve in curves.items() if curve is not None]
    if not found:
        return pd.DataFrame()
    table = pd.concat(found, axis=1).sort_index()
    return table if x == "round" else table.ffill().where(table.bfill().notna())


def _accuracy_vs(folder: Path, summary: pd.DataFrame, x: str, xlabel: str, name: str):
    panel_keys, line_keys = _layout(summary)
    panels = _groups(summary, panel_keys)
    figure, axes = _panels(len(panels))
    drawn = False
    for axis, (title, panel) in zip(axes, panels, strict=True):
        for label, runs in _groups(panel, line_keys):
            curves = _accuracy_curves(folder, runs, x)
            if curves.empty:
                continue
            drawn = True
            (line,) = axis.plot(curves.index, curves.mean(axis=1), label=label or "all runs")
            if curves.shape[1] > 1:
                axis.fill_between(
                    curves.index,
                    curves.min(axis=1),
                    curves.max(axis=1),
                    color=line.get_color(),
                    alpha=0.2,
                )
            if x == "round":  # a personal run's clients' own models, where judged
                personal = _accuracy_curves(folder, runs, x, "personal_accuracy")
                mean = personal.mean(axis=1).dropna()
                if len(mean):
                    legend = f"{label or 'all runs'}, personalised"
                    axis.plot(mean.index, mean, "--", color=line.get_color(), label=legend)
        axis.set(title=title, xlabel=xlabel, ylabel="central accuracy")
        if x == "round":
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
        axis.legend(fontsize="small")
    if not drawn:
        plt.close(figure)
        return None
    return _save(figure, folder / name)


def accuracy_vs_round(folder: Path, summary: pd.DataFrame) -> Path | None:
    return _accuracy_vs(folder, summary, "round", "round", PLOTS[0])


def accuracy_vs_sim_hours(folder: Path, summary: pd.DataFrame) -> Path | None:
    """Central accuracy against the simulated clock (fedsim.simulation.clock); None for runs
    written before it had one."""
    return _accuracy_vs(folder, summary, "sim_clock", "simulated hours", PLOTS[6])


def _versus_clients(
    folder: Path, summary: pd.DataFrame, column: str, ylabel: str, name: str
) -> Path | None:
    """`column` against the client count (mean over seeds, min-max bars), a line per
    combination of the other swept settings; the runs whose count --clients gave (not
    the data's groups: a blank cell), None where no run's was."""
    summary = summary[summary["clients"].notna()]
    if summary.empty:
        return None
    others = [c for c in setting_columns(summary) if c not in ("clients", "seed")]
    figure, axis = plt.subplots(figsize=(6, 4))
    for label, runs in _groups(summary, others):
        stats = runs.groupby("clients")[column].agg(["mean", "min", "max"]).dropna()
        if stats.empty:
            continue
        error = [stats["mean"] - stats["min"], stats["max"] - stats["mean"]]
        axis.errorbar(stats.index, stats["mean"], yerr=error, marker="o", capsize=3, label=label)
    clients = sorted(summary["clients"].unique())
    if len(clients) > 1:
        axis.set_xscale("log", base=2)
    axis.set_xticks(clients, [str(c) for c in clients])
    axis.set(xlabel="clients", ylabel=ylabel)
    axis.set_ylim(bottom=0)  # differences drawn to scale
    axis.grid(alpha=0.3)
    if others:
        axis.legend(fontsize="small")
    return _save(figure, folder / name)


def final_accuracy_vs_clients(folder: Path, summary: pd.DataFrame) -> Path | None:
    return _versus_clients(folder, summary, "final_accuracy", "final central accuracy", PLOTS[1])


def seconds_per_round_vs_clients(folder: Path, summary: pd.DataFrame) -> Path | None:
    return _versus_clients(folder, summary, "seconds_per_round", "seconds per round", PLOTS[2])


def _counts_partitioner(counts: pd.DataFrame):
    """A flwr-datasets partitioner rebuilt from a label_counts.csv (a row per client, a
    column per class), so that `plot_label_distributions` can draw it."""
    from datasets import ClassLabel, Dataset, Features
    from flwr_datasets.partitioner import Partitioner

    matrix = counts.to_numpy(dtype=np.int64)
    classes = list(counts.columns)

    class CountsPartitioner(Partitioner):
        def __init__(self) -> None:
            super().__init__()
            self.bounds = np.concatenate([[0], np.cumsum(matrix.sum(axis=1))])

        def load_partition(self, partition_id: int) -> Dataset:
            return self.dataset.select(
                range(self.bounds[partition_id], self.bounds[partition_id + 1])
            )

        @property
        def num_partitions(self) -> int:
            return len(matrix)

    partitioner = CountsPartitioner()
    labels = np.concatenate([np.repeat(np.arange(len(classes)), row) for row in matrix])
    partitioner.dataset = Dataset.from_dict(
        {"label": labels}, features=Features({"label": ClassLabel(names=classes)})
    )
    return partitioner


def label_distribution(folder: Path, summary: pd.DataFrame) -> Path | None:
    """Per-client label counts, one panel per partition setting (its largest client
    count, first seed); None when no run wrote label_counts.csv."""
    from flwr_datasets.visualization import plot_label_distributions

    keys = [c for c in PARTITION_SETTINGS if c in summary.columns]
    chosen = []
    for label, runs in _groups(summary, keys):
        ordered = runs.sort_values(["clients", "seed"], ascending=[False, True])
        paths = [folder / run / LABEL_COUNTS_CSV for run in ordered["run"]]
        found = next((p for p in paths if p.exists()), None)
        if found is not None:
            chosen.append((label, found))
    if not chosen:
        return None
    figure, axes = _panels(len(chosen), width=6.0)
    for index, (axis, (label, path)) in enumerate(zip(axes, chosen, strict=True)):
        counts = read_csv(path, index_col="client")
        plot_label_distributions(
            _counts_partitioner(counts),
            label_name="label",
            axis=axis,
            title=f"{label or 'label distribution'} ({len(counts)} clients)",
            legend=index == len(chosen) - 1,
            legend_title="label",
            legend_kwargs={"loc": "center left", "bbox_to_anchor": (1.0, 0.5)},  # outside
        )
    return _save(figure, folder / PLOTS[3])


def _first_runs(summary: pd.DataFrame) -> list[tuple[str, str]]:
    """(label, run) for each combination of swept settings, its first seed."""
    keys = [c for c in setting_columns(summary) if c != "seed"]
    return [
        (label, runs.sort_values("seed")["run"].iloc[0]) for label, runs in _groups(summary, keys)
    ]


def client_accuracy_by_round(folder: Path, summary: pd.DataFrame) -> Path | None:
    """Whom the model serves: the evaluated clients' accuracies by round, the median
    with 25-75 and 10-90 percentile bands, a panel per setting (first seed). None when
    no run evaluated on clients."""
    panels = []
    for label, run in _first_runs(summary):
        path = folder / run / CLIENTS_CSV
        if not path.exists():
            continue
        clients = read_csv(path, ("round", "phase", "status", "accuracy"))
        evaluated = clients[(clients["phase"] == "evaluate") & (clients["status"] == "ok")]
        if not evaluated.empty:
            panels.append((label, evaluated.groupby("round")["accuracy"]))
    if not panels:
        return None
    figure, axes = _panels(len(panels))
    for axis, (label, by_round) in zip(axes, panels, strict=True):
        for (low, high), alpha in zip(BANDS, (0.15, 0.3), strict=True):
            bounds = by_round.quantile([low / 100, high / 100]).unstack()
            axis.fill_between(
                bounds.index,
                bounds.iloc[:, 0],
                bounds.iloc[:, 1],
                alpha=alpha,
                color="tab:blue",
                label=f"clients {low}-{high} %",
                linewidth=0,
            )
        median = by_round.median()
        axis.plot(median.index, median, color="tab:blue", label="median client")
        axis.set(title=label, xlabel="round", ylabel="client accuracy (held-out share)")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
        axis.legend(fontsize="small")
    return _save(figure, folder / PLOTS[4])


def accuracy_vs_megabytes(folder: Path, summary: pd.DataFrame) -> Path:
    """What the talking costs: central accuracy against the megabytes sent and received
    so far (clients.csv's bytes, summed per round), a line per setting (first seed)."""
    figure, axis = plt.subplots(figsize=(6, 4))
    for label, run in _first_runs(summary):
        path = folder / run / ROUNDS_CSV
        if not path.exists():
            continue
        rounds = read_csv(path, ROUNDS_COLUMNS)
        megabytes = (rounds["bytes_down"] + rounds["bytes_up"]).cumsum() / 1e6
        axis.plot(megabytes, rounds["central_accuracy"], marker=".", label=label or run)
    axis.set(xlabel="megabytes communicated (down + up, all clients)", ylabel="central accuracy")
    axis.grid(alpha=0.3)
    axis.legend(fontsize="small")
    return _save(figure, folder / PLOTS[5])


DRAWERS: tuple[Callable[[Path, pd.DataFrame], Path | None], ...] = (
    accuracy_vs_round,
    final_accuracy_vs_clients,
    seconds_per_round_vs_clients,
    label_distribution,
    client_accuracy_by_round,
    accuracy_vs_megabytes,
    accuracy_vs_sim_hours,
)


def draw_all(folder: Path, summary: pd.DataFrame) -> list[Path]:
    """Every plot of the experiment in `folder`; returns the files written."""
    if summary.empty:
        return []
    return [path for draw in DRAWERS if (path := draw(folder, summary)) is not None]


def report(folder: Path, target: float | None = None) -> None:
    """summary.csv and every plot of the experiment in `folder`, from its CSVs alone
    (the time to `target` accuracy, else to each run's own --target-accuracy)."""
    if not folder.is_dir() or not run_folders(folder):
        raise ConfigError("--plot", f"{folder} holds no run folders, give results/<experiment>")
    summary = summarize(folder, target)  # every file read (and refused) before any is written
    if not any(completed_rounds(run_dir) for run_dir in run_folders(folder)):
        raise ConfigError(
            "--plot", f"no run in {folder} has a round in its rounds.csv: nothing to plot"
        )
    write_summary(folder, summary)
    print(f"fedsim: {folder / 'summary.csv'} ({len(summary)} runs)", flush=True)
    for path in draw_all(folder, summary):
        print(f"fedsim: {path}", flush=True)
