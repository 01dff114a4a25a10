"""Where the time goes: py-spy over a run's whole process tree (the driver, Ray's
helpers, the client actors), summed by kind of process and by phase.

    python -m bench.profile --clients 2 --rounds 3 --data ../shared/data/cifar10

Runs `simulate.py` with those options under `py-spy record --subprocesses` (50 samples
a second of each process's busy threads) and prints, for each kind of process, the
seconds spent importing, training, evaluating, and the busiest other functions.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

from bench.measure import ROOT, SCRATCH, process_kind

RATE = 50  # samples per second
PHASES = {  # phase: a frame that marks it (the innermost marked frame wins)
    "import": "_find_and_load",
    "train": "train (fedsim/learning/training.py",
    "evaluate": "evaluate (fedsim/learning/training.py",
}


def record(options: list[str], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    command = ["py-spy", "record", "--subprocesses", "--rate", str(RATE), "--format", "raw"]
    command += ["-o", str(out), "--", sys.executable, "simulate.py", *options]
    subprocess.run(command, cwd=ROOT, check=True)


def summarize(raw: Path, top: int = 5) -> None:
    phases: dict[str, Counter] = defaultdict(Counter)
    others: dict[str, Counter] = defaultdict(Counter)
    for line in raw.read_text().splitlines():
        stack, count = line.rsplit(" ", 1)
        frames = stack.split(";")
        processes = [f for f in frames if f.startswith("process ")]
        command = re.sub(r'^process \d+:"|"$', "", processes[-1])
        kind = "driver" if len(processes) == 1 else process_kind(command)
        own = [f for f in frames if not f.startswith(("process ", "thread "))]
        marked = [p for f in own for p, mark in PHASES.items() if f.startswith(mark)]
        phase = marked[-1] if marked else "other"
        phases[kind][phase] += int(count)
        if phase == "other" and own:
            others[kind][own[-1].split(" (")[0]] += int(count)
    for kind, counts in sorted(phases.items(), key=lambda item: -item[1].total()):
        split = ", ".join(f"{p} {n / RATE:.1f}" for p, n in counts.most_common())
        print(f"{kind}: {counts.total() / RATE:.1f} s busy ({split})")
        for function, n in others[kind].most_common(top):
            print(f"    {n / RATE:5.1f} s  {function}")


if __name__ == "__main__":
    path = SCRATCH / "profile.txt"
    record(sys.argv[1:], path)
    summarize(path)
