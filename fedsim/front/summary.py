"""summary.csv: one row per run folder of an experiment, read back from what the runs wrote.

Only config.json and rounds.csv are read, so a summary can be redrawn anywhere the
folders are copied to, without the data and without running anything.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from fedsim.ground.config import RunConfig
from fedsim.ground.errors import ConfigError
from fedsim.ground.files import CONFIG_JSON, ROUNDS_CSV, SUMMARY_CSV
from fedsim.ground.option import WHERE
from fedsim.runner import options

ALWAYS_SHOWN = ("clients", "seed")  # the plots' axes, shown even when not swept
METRICS = (
    "final_accuracy",
    "best_accuracy",
    "rounds_done",
    "complete",
    "status",
    "total_seconds",
    "seconds_per_round",
    "clients_failed",
    "eval_accuracy_p10",
    "eval_accuracy_std",
    "total_mb",
    "stragglers",
    "sim_seconds_to_target",
)
# Shown where a run's algorithm is personal (fedsim.algorithms.personal): its clients'
# personalised accuracy, the last evaluated (rounds.csv's mean and 10th percentile)
PERSONAL_METRICS = ("final_personal_accuracy", "personal_accuracy_p10")
MB = 1e6
# the rounds.csv columns the summary and the plots read
ROUNDS_COLUMNS = ("round", "central_accuracy", "round_seconds", "clients_failed")
ROUNDS_COLUMNS += ("bytes_down", "bytes_up")


PLOT = "--plot"  # the option whose folder holds the results read here


def read_csv(path: Path, columns: tuple[str, ...] = (), **options) -> pd.DataFrame:
    """A CSV a run wrote, with at least `columns`; one that is not (garbage, empty,
    binary, another program's) is a ConfigError naming the file, not a traceback."""
    try:
        frame = pd.read_csv(path, **options)
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as error:
        raise ConfigError(
            PLOT, f"{path} is not a CSV fedsim wrote ({_first_line(error)})"
        ) from None
    if missing := [c for c in columns if c not in frame.columns]:
        raise ConfigError(PLOT, f"{path} is not a CSV fedsim wrote (no {', '.join(missing)})")
    return frame


def read_config(run_dir: Path) -> tuple[dict, RunConfig]:
    """A run's config.json and its RunConfig; a damaged one is a ConfigError."""
    path = run_dir / CONFIG_JSON
    try:
        document = json.loads(path.read_text())
        return document, options.from_document(document["config"])
    except (OSError, ValueError, UnicodeDecodeError, KeyError, TypeError) as error:
        message = f"{path} is not a config.json fedsim wrote ({_first_line(error)})"
        raise ConfigError(PLOT, message) from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


def completed_rounds(run_dir: Path) -> list[int]:
    """The rounds rounds.csv holds, in file order (empty when there is none)."""
    path = run_dir / ROUNDS_CSV
    if not path.exists() or path.stat().st_size == 0:
        return []
    return read_csv(path, ("round",))["round"].tolist()


def is_complete(run_dir: Path, document: dict) -> bool:
    """A run is complete when its config.json says so and its rounds.csv has exactly
    the rows 0..rounds (a run that ended aborted or was killed is not, whatever its
    row count)."""
    rounds = document["config"]["rounds"]
    return document.get("status") == "complete" and completed_rounds(run_dir) == list(
        range(rounds + 1)
    )


def run_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and (p / CONFIG_JSON).is_file())


def sim_seconds_to_target(frame: pd.DataFrame, target: float | None) -> float | None:
    """The simulated time of the first row whose central accuracy reaches `target`
    (None if none does, or the run has no simulated clock)."""
    if target is None or "sim_clock" not in frame:
        return None
    reached = frame[frame["central_accuracy"] >= target]
    return float(reached["sim_clock"].iloc[0]) if len(reached) else None


def _last(frame: pd.DataFrame, column: str) -> float | None:
    """The column's last value that is set (a round without client evaluation has none)."""
    values = frame[column].dropna() if column in frame else pd.Series(dtype=float)
    return values.iloc[-1] if len(values) else None


def _row(run_dir: Path, cfg: RunConfig, document: dict, target: float | None) -> dict:
    rounds_path = run_dir / ROUNDS_CSV
    written = rounds_path.exists() and rounds_path.stat().st_size > 0
    frame = read_csv(rounds_path, ROUNDS_COLUMNS) if written else pd.DataFrame()
    trained = frame[frame["round"] > 0] if len(frame) else frame
    accuracy = frame["central_accuracy"] if len(frame) else pd.Series(dtype=float)
    communicated = frame[["bytes_down", "bytes_up"]].to_numpy().sum() if len(frame) else 0
    return {
        "final_accuracy": accuracy.iloc[-1] if len(accuracy) else None,
        "best_accuracy": accuracy.max() if len(accuracy) else None,
        "rounds_done": int(frame["round"].iloc[-1]) if len(frame) else 0,
        "complete": is_complete(run_dir, document),
        "status": document.get("status"),
        "total_seconds": document.get("timings_seconds", {}).get("total"),
        "seconds_per_round": trained["round_seconds"].mean() if len(trained) else None,
        "clients_failed": int(trained["clients_failed"].sum()) if len(trained) else 0,
        "eval_accuracy_p10": _last(frame, "eval_accuracy_p10"),
        "eval_accuracy_std": _last(frame, "eval_accuracy_std"),
        "total_mb": communicated / MB,
        "stragglers": int(trained["stragglers"].sum()) if "stragglers" in trained else 0,
        "sim_seconds_to_target": sim_seconds_to_target(frame, target),
        "final_personal_accuracy": _last(frame, "personal_accuracy"),
        "personal_accuracy_p10": _last(frame, "personal_accuracy_p10"),
    }


def summarize(folder: Path, target: float | None = None) -> pd.DataFrame:
    """One row per run: the settings that differ between runs (blank where a setting
    does not apply, like alpha on an IID run), then the results. The time to the
    target accuracy is to `target`, else to each run's own --target-accuracy."""
    runs = []
    for run_dir in run_folders(folder):
        document, cfg = read_config(run_dir)
        runs.append((run_dir, cfg, document))
    flat = {run_dir: cfg.flat() for run_dir, cfg, _ in runs}
    where = options.with_role(WHERE)  # where a run went, not what it computed
    settings = [
        name
        for name in options.every()
        if name not in where
        and (name in ALWAYS_SHOWN or len({flat[run_dir].get(name) for run_dir in flat}) > 1)
    ]
    rows = [
        {
            "run": run_dir.name,
            **{
                name: flat[run_dir][name] if options.applies(cfg, name) else None
                for name in settings
            },
            **_row(run_dir, cfg, document, target or cfg.target_accuracy),
        }
        for run_dir, cfg, document in runs
    ]
    frame = pd.DataFrame(rows, columns=["run", *settings, *METRICS, *PERSONAL_METRICS])
    unused = [c for c in PERSONAL_METRICS if frame[c].isna().all()]  # no personal run
    frame = frame.drop(columns=unused)
    return frame.sort_values(settings, kind="stable", na_position="first", ignore_index=True)


def write_summary(folder: Path, summary: pd.DataFrame) -> None:
    summary.to_csv(folder / SUMMARY_CSV, index=False, float_format="%.6g")


def setting_columns(summary: pd.DataFrame) -> list[str]:
    """The columns of a summary that are run settings (option names)."""
    return [c for c in summary.columns if c in options.every()]
