"""The numbers a change must not move: a handful of representative runs, recorded once
and compared after a change, column by column (wall-clock columns aside).

    python -m bench.golden_runs record OUT [--data DIR]   # run them, into OUT/<name>/
    python -m bench.golden_runs compare BEFORE AFTER      # exit 1 at the first difference

Each run is `simulate.py` as a user runs it, on the real CIFAR-10 (`--data`). They
cover what a redesign could disturb: the README's main command; SCAFFOLD on a
Dirichlet split (client memory); FedNova on label shards; FedBuff on device profiles
(the buffered schedule); a deadline with over-selection (stragglers); DP with an attack
and a robust rule; a run killed with SIGKILL and resumed; 1,000 clients in bundles; and
a sweep of three algorithms with their own options (one experiment, shared actors).
Same machine, same CPU kind: another one rounds floats differently.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from fedsim.ground.files import CLIENTS_CSV, ROUNDS_CSV

ROOT = Path(__file__).resolve().parents[1]
TIMING = {ROUNDS_CSV: ["round_seconds"], CLIENTS_CSV: ["seconds"]}  # wall clock

RUNS: dict[str, str] = {
    "readme": "--clients 2 --rounds 3",
    "scaffold-dirichlet": "--strategy scaffold --clients 6 --rounds 3 --partition dirichlet "
    "--alpha 0.3 --fraction-fit 0.5",
    "fednova-shards": "--strategy fednova --clients 4 --rounds 2 --partition pathological "
    "--classes-per-client 2",
    "fedbuff-profiles": "--strategy fedbuff --clients 20 --rounds 4 --profiles lognormal "
    "--buffer-size 3 --concurrency 5 --fraction-evaluate 0.25",
    "deadline-overselect": "--clients 12 --rounds 3 --profiles lognormal --fraction-fit 0.5 "
    "--deadline 60 --over-select 1.5",
    "dp-attack-robust": "--strategy fedmedian --clients 10 --rounds 3 --dp server-fixed "
    "--dp-noise-multiplier 0.3 --dp-clipping-norm 2 --byzantine-fraction 0.2 --attack sign-flip",
    "bundled-1000": "--clients 1000 --rounds 2 --fraction-fit 0.05 --batch-size 10 "
    "--fraction-evaluate 0.02",
    "sweep": "--strategy fedprox,qfedavg,fedadam --proximal-mu 0.1 --q 0.5 --clients 4 --rounds 2",
}
KILLED = ("killed-resumed", "--clients 3 --rounds 4 --fraction-fit 0.67", 2)  # killed after 2


def _simulate(out: Path, name: str, options: str, data: str) -> subprocess.Popen:
    argv = [sys.executable, "simulate.py", *options.split(), "--data", data]
    argv += ["--results-dir", str(out), "--name", name]
    return subprocess.Popen(argv, cwd=ROOT, start_new_session=True)


def record(out: Path, data: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, options in RUNS.items():
        shutil.rmtree(out / name, ignore_errors=True)
        print(f"golden_runs: {name}: {options}", flush=True)
        if _simulate(out, name, options, data).wait() != 0:
            raise SystemExit(f"golden_runs: {name} failed")
    name, options, after = KILLED
    shutil.rmtree(out / name, ignore_errors=True)
    print(f"golden_runs: {name}: {options}, killed after round {after}", flush=True)
    process = _simulate(out, name, options, data)
    rounds = out / name / ROUNDS_CSV
    while not (rounds.exists() and len(rounds.read_text().splitlines()) >= after + 2):
        if process.poll() is not None:
            raise SystemExit(f"golden_runs: {name} ended before it could be killed")
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    resumed = subprocess.run([sys.executable, "simulate.py", "--resume", str(out / name)], cwd=ROOT)
    if resumed.returncode != 0:
        raise SystemExit(f"golden_runs: {name} did not resume")


def _tables(folder: Path) -> dict[str, pd.DataFrame]:
    """Every rounds.csv and clients.csv under `folder`, wall-clock columns dropped."""
    tables = {}
    for file, timing in TIMING.items():
        for path in sorted(folder.rglob(file)):
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
            tables[str(path.relative_to(folder))] = frame.drop(columns=timing)
    return tables


def compare(before: Path, after: Path) -> bool:
    """Whether every table is identical, cell for cell, as written; says the first
    difference of each table that differs."""
    old, new = _tables(before), _tables(after)
    same = old.keys() == new.keys()
    if not same:
        print(f"golden_runs: files differ: {sorted(old.keys() ^ new.keys())}")
    for path in sorted(old.keys() & new.keys()):
        a, b = old[path], new[path]
        if a.equals(b):
            print(f"golden_runs: {path}: identical ({len(a)} rows)")
            continue
        same = False
        if list(a.columns) != list(b.columns) or len(a) != len(b):
            print(f"golden_runs: {path}: shape {a.shape} {list(a.columns)} vs {b.shape}")
            continue
        row = next(i for i in range(len(a)) if not a.iloc[i].equals(b.iloc[i]))
        print(f"golden_runs: {path}: row {row} differs:")
        print(f"  before {a.iloc[row].to_dict()}\n  after  {b.iloc[row].to_dict()}")
    return same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    recording = verbs.add_parser("record")
    recording.add_argument("out", type=Path)
    recording.add_argument("--data", default="../shared/data/cifar10")
    comparing = verbs.add_parser("compare")
    comparing.add_argument("before", type=Path)
    comparing.add_argument("after", type=Path)
    args = parser.parse_args()
    if args.verb == "record":
        record(args.out.resolve(), args.data)
    elif not compare(args.before, args.after):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
