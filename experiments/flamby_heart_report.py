"""FLamby's Fed-Heart-Disease table from the experiment's results folder alone.

    python experiments/flamby_heart_report.py results/flamby_heart_disease [OUT.csv]

(OUT.csv: docs/results/flamby_heart_disease.csv by default.)

A run's score is FLamby's: the final global model's test accuracy on each centre's test
rows (groups.csv, last round), averaged over the four centres. `local-i` is centre i's
model on every centre (FLamby's "Local i"); `local-i-own` is the same model on centre
i's own test rows (a personalisation table's figure). Prints the markdown table and
writes the CSV (method, seeds, fedsim_mean, fedsim_std, published_mean, published_std).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

from fedsim.ground.files import CONFIG_JSON, GROUPS_CSV
from fedsim.learning.data.tables import HEART_CENTRES

# FLamby's published figures: flamby/results/results_benchmark_fed_heart_disease/
# heart_seed42.csv .. heart_seed46.csv (owkin/FLamby), each seed's mean over
# client_test_0..3 of "Metric", then mean and sample std over the five seeds
PUBLISHED = {
    "pooled": (0.735295, 0.002741),
    "local-0": (0.722121, 0.021079),
    "local-1": (0.628750, 0.016918),
    "local-2": (0.566973, 0.057905),
    "local-3": (0.636640, 0.038572),
    "fedavg": (0.684968, 0.028290),
    "fedprox": (0.684968, 0.028290),
    "scaffold": (0.684006, 0.027982),
    "fedadam": (0.725539, 0.013813),
    "fedyogi": (0.731370, 0.012527),
    "fedadagrad": (0.731370, 0.012527),
}
COLUMNS = ("method", "seeds", "fedsim_mean", "fedsim_std", "published_mean", "published_std")


def method(config: dict) -> str:
    """The table's name for a run: pooled, local-i, or its --strategy."""
    if config.get("only_group"):
        return f"local-{HEART_CENTRES.index(config['only_group'])}"
    if config.get("partition") != "natural" and config.get("clients") == 1:
        return "pooled"
    return config["strategy"]


def scores(folder: Path) -> pd.DataFrame:
    """One row per finished run: method, seed, the mean over centres, and (local runs)
    the accuracy on the centre's own test rows."""
    rows = []
    for config_file in sorted(folder.glob(f"*/{CONFIG_JSON}")):
        document = json.loads(config_file.read_text())
        groups_file = config_file.parent / GROUPS_CSV
        if document.get("status") != "complete" or not groups_file.exists():
            continue
        config = document["config"]
        groups = pd.read_csv(groups_file)
        last = groups[groups["round"] == groups["round"].max()].set_index("group")
        name = method(config)
        rows.append({"method": name, "seed": config["seed"], "score": last["accuracy"].mean()})
        if config.get("only_group"):
            own = last.loc[config["only_group"], "accuracy"]
            rows.append({"method": f"{name}-own", "seed": config["seed"], "score": own})
    return pd.DataFrame(rows)


def table(found: pd.DataFrame) -> pd.DataFrame:
    order = [*PUBLISHED, *sorted(set(found["method"]) - set(PUBLISHED))]
    rows = []
    for name in order:
        of = found[found["method"] == name]["score"]
        if of.empty:
            continue
        published = PUBLISHED.get(name, (None, None))
        std = of.std() if len(of) > 1 else float("nan")
        rows.append((name, len(of), of.mean(), std, *published))
    return pd.DataFrame(rows, columns=list(COLUMNS))


def markdown(frame: pd.DataFrame) -> str:
    def cell(mean: float | None, std: float | None) -> str:
        if mean is None or pd.isna(mean):
            return ""
        return f"{mean:.3f} ± {std:.3f}" if not pd.isna(std) else f"{mean:.3f}"

    lines = ["| method | seeds | fedsim | FLamby | difference |", "|---|---:|---:|---:|---:|"]
    for row in frame.itertuples():
        gap = "" if pd.isna(row.published_mean) else f"{row.fedsim_mean - row.published_mean:+.3f}"
        lines.append(
            f"| {row.method} | {row.seeds} | {cell(row.fedsim_mean, row.fedsim_std)} | "
            f"{cell(row.published_mean, row.published_std)} | {gap} |"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    folder = Path(argv[0])
    out = Path(argv[1]) if len(argv) > 1 else Path("docs/results/flamby_heart_disease.csv")
    frame = table(scores(folder))
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(out, index=False, float_format="%.6f")
    print(markdown(frame))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
