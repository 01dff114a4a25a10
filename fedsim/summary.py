"""summary.csv: one row per run folder of an experiment, read back from what the runs wrote.

Only config.json and rounds.csv are read, so a summary can be redrawn anywhere the
folders are copied to, without the data and without running anything.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from fedsim.config import WHERE, RunConfig, applies, fields, with_role

SUMMARY_CSV = "summary.csv"
ROUNDS_CSV = "rounds.csv"
CONFIG_JSON = "config.json"
ALWAYS_SHOWN = ("clients", "seed")  # the plots' axes, shown even when not swept
NOT_SETTINGS = with_role(WHERE)  # where a run went, not what it computed
METRICS = (
    "final_accuracy",
    "best_accuracy",
    "rounds_done",
    "complete",
    "total_seconds",
    "seconds_per_round",
    "clients_failed",
    "eval_accuracy_p10",
    "eval_accuracy_std",
    "total_mb",
)
MB = 1e6


def completed_rounds(run_dir: Path) -> list[int]:
    """The rounds rounds.csv holds, in file order (empty when there is none)."""
    path = run_dir / ROUNDS_CSV
    if not path.exists() or path.stat().st_size == 0:
        return []
    return pd.read_csv(path, usecols=["round"])["round"].tolist()


def is_complete(run_dir: Path, rounds: int) -> bool:
    """A run is complete when its rounds.csv has exactly the rows 0..rounds."""
    return completed_rounds(run_dir) == list(range(rounds + 1))


def run_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and (p / CONFIG_JSON).is_file())


def _last(frame: pd.DataFrame, column: str) -> float | None:
    """The column's last value that is set (a round without client evaluation has none)."""
    values = frame[column].dropna() if column in frame else pd.Series(dtype=float)
    return values.iloc[-1] if len(values) else None


def _row(run_dir: Path, cfg: RunConfig, document: dict) -> dict:
    rounds_path = run_dir / ROUNDS_CSV
    frame = pd.read_csv(rounds_path) if rounds_path.exists() else pd.DataFrame()
    trained = frame[frame["round"] > 0] if len(frame) else frame
    accuracy = frame["central_accuracy"] if len(frame) else pd.Series(dtype=float)
    communicated = frame[["bytes_down", "bytes_up"]].to_numpy().sum() if len(frame) else 0
    return {
        "final_accuracy": accuracy.iloc[-1] if len(accuracy) else None,
        "best_accuracy": accuracy.max() if len(accuracy) else None,
        "rounds_done": int(frame["round"].iloc[-1]) if len(frame) else 0,
        "complete": is_complete(run_dir, cfg.rounds),
        "total_seconds": document.get("timings_seconds", {}).get("total"),
        "seconds_per_round": trained["round_seconds"].mean() if len(trained) else None,
        "clients_failed": int(trained["clients_failed"].sum()) if len(trained) else 0,
        "eval_accuracy_p10": _last(frame, "eval_accuracy_p10"),
        "eval_accuracy_std": _last(frame, "eval_accuracy_std"),
        "total_mb": communicated / MB,
    }


def summarize(folder: Path) -> pd.DataFrame:
    """One row per run: the settings that differ between runs (blank where a setting
    does not apply, like alpha on an IID run), then the results."""
    runs = []
    for run_dir in run_folders(folder):
        document = json.loads((run_dir / CONFIG_JSON).read_text())
        runs.append((run_dir, RunConfig(**document["config"]), document))
    settings = [
        f.name
        for f in fields()
        if f.name not in NOT_SETTINGS
        and (f.name in ALWAYS_SHOWN or len({getattr(cfg, f.name) for _, cfg, _ in runs}) > 1)
    ]
    rows = [
        {
            "run": run_dir.name,
            **{name: getattr(cfg, name) if applies(cfg, name) else None for name in settings},
            **_row(run_dir, cfg, document),
        }
        for run_dir, cfg, document in runs
    ]
    frame = pd.DataFrame(rows, columns=["run", *settings, *METRICS])
    return frame.sort_values(settings, kind="stable", na_position="first", ignore_index=True)


def write_summary(folder: Path) -> pd.DataFrame:
    frame = summarize(folder)
    frame.to_csv(folder / SUMMARY_CSV, index=False, float_format="%.6g")
    return frame


def setting_columns(summary: pd.DataFrame) -> list[str]:
    """The columns of a summary that are run settings (RunConfig field names)."""
    names = {f.name for f in fields()}
    return [c for c in summary.columns if c in names]
