"""The NIID-Bench round (10 parties of a Dirichlet(0.5) split, 10 local epochs, batch 64,
augmentation; experiments/niid_bench_cifar10.toml's setting), 2 rounds: fedsim, one
client at a time and trained together (--vectorize on), against the plain PyTorch
reference doing the same work, in one invocation.

    python -m bench.niid_round [--repeats N] [--no-wait] [simulate.py options]
"""

from __future__ import annotations

from bench.measure import Run, save_table
from bench.variants import best, parse, ratio, target

WORKLOAD = ["--clients", "10", "--rounds", "2", "--local-epochs", "10", "--batch-size", "64"]
WORKLOAD += ["--lr", "0.01", "--momentum", "0.9", "--weight-decay", "1e-5", "--augment"]
WORKLOAD += ["--val-fraction", "0", "--partition", "dirichlet", "--alpha", "0.5"]
WORKLOAD += ["--dirichlet-balance", "--min-partition-size", "10"]
VARIANTS = ("reference", "fedsim", "fedsim-together")


def round_2(run: Run) -> float:
    return run.round_seconds[-1]


def main() -> None:
    bench = parse(__doc__, WORKLOAD)
    bench.prepare()
    runs = bench.repeat(VARIANTS, "niid")
    rows = [
        {
            "variant": variant,
            "wall_s": run.wall,
            "round1_s": run.round_seconds[0],
            "round2_s": round_2(run),
            "accuracy": run.final_accuracy,
            **run.conditions(),
        }
        for variant, variant_runs in runs.items()
        for run in variant_runs
    ]
    save_table("niid_round", rows, bench.notes)
    seconds = {variant: best(rs, round_2) for variant, rs in runs.items()}
    rows = [
        target(  # issue 29's bound, for either path (it was 1.2: as costly as the loop)
            "fedsim NIID round / plain loop round",
            ratio(seconds["fedsim"], seconds["reference"]),
            0.75,
        ),
        target(
            "fedsim --vectorize on NIID round / plain loop round",
            ratio(seconds["fedsim-together"], seconds["reference"]),
            0.75,
        ),
    ]
    save_table("niid_round_ratios", rows, [f"best undisturbed of {bench.repeats} run(s) each"])


if __name__ == "__main__":
    main()
