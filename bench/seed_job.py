"""Seed job (2 IID clients, 3 rounds, 1 local epoch, batch 32) four ways, side by side:
the plain PyTorch reference, Flower's tutorial pattern, and fedsim with a warm and with
a cold data cache. Prints the runs and the ratios against the targets of issue 3.

    python -m bench.seed_job [--repeats N] [--no-wait] [simulate.py options]
"""

from __future__ import annotations

from bench.measure import Run, mib, save_table
from bench.variants import best, median, parse, ratio, target

WORKLOAD = ["--clients", "2", "--rounds", "3", "--partition", "iid"]
WORKLOAD += ["--local-epochs", "1", "--batch-size", "32"]
VARIANTS = {  # label: (variant, cold cache)
    "fedsim warm": ("fedsim", False),
    "reference": ("reference", False),
    "fedsim cold": ("fedsim", True),
    "tutorial": ("tutorial", False),
}


def _row(label: str, run: Run) -> dict:
    t = run.timings
    rounds = run.round_seconds
    return {
        "variant": label,
        "wall_s": run.wall,
        "cpu_s": run.cpu,
        "imports_s": t["imports"],
        "data_s": t["data_load"] + t["partition"],
        "ray_start_s": t["ray_start"],
        "round1_s": rounds[0],
        "later_rounds_s": median(rounds[1:]),
        "central_eval_s": t["central_evaluate"],
        "accuracy": run.final_accuracy,
        "peak_rss_mib": mib(run.peak_rss),
        "peak_pss_mib": mib(run.peak_pss),
        "leaked_procs": len(run.leaked),
        **run.conditions(),
    }


def main() -> None:
    bench = parse(__doc__, WORKLOAD)
    bench.prepare(tutorial=True)
    runs: dict[str, list[Run]] = {label: [] for label in VARIANTS}
    for repeat in range(1, bench.repeats + 1):
        for label, (variant, cold) in VARIANTS.items():
            name = f"seed-{label.replace(' ', '-')}-{repeat}"
            runs[label].append(bench.run(variant, name, cold=cold))
    save_table("seed_job", [_row(k, r) for k, rs in runs.items() for r in rs], bench.notes)
    save_table(
        "seed_job_cpu",
        [{"variant": k, **r.cpu_by_process} for k, rs in runs.items() for r in rs],
        ["CPU seconds by process kind over the whole run (sampled every 0.5 s)"],
    )

    wall = {label: best(rs, lambda r: r.wall) for label, rs in runs.items()}
    compute = best(runs["reference"], lambda r: r.timings["rounds"])  # the plain loop's rounds
    memory = best(runs["fedsim warm"], lambda r: r.peak_rss)
    later = {label: best(rs, lambda r: median(r.round_seconds[1:])) for label, rs in runs.items()}
    rows = [
        target("fedsim warm wall / plain-loop compute", ratio(wall["fedsim warm"], compute), 1.3),
        target("fedsim warm peak RSS of all processes, MiB", mib(memory), 3072),
        target("fedsim warm / reference, wall", ratio(wall["fedsim warm"], wall["reference"]), 1.5),
        target(
            "fedsim warm / reference, rounds 2+",
            ratio(later["fedsim warm"], later["reference"]),
            1.5,
        ),
        target(
            "tutorial / fedsim warm, wall", ratio(wall["tutorial"], wall["fedsim warm"]), at_least=5
        ),
        target("fedsim cold / warm, wall", ratio(wall["fedsim cold"], wall["fedsim warm"]), 2.0),
    ]
    save_table("seed_job_ratios", rows, [f"best undisturbed of {bench.repeats} run(s) each"])


if __name__ == "__main__":
    main()
