"""A Shakespeare round (experiments/shakespeare_next_char.toml's FedAvg: 10 of the 214
speakers a round, 50 local steps of batch 10, LEAF's LSTM), 3 rounds: fedsim against the
plain PyTorch reference doing the same work, in one invocation; s/round and memory.

    python -m bench.text_round --data ../shared/data/tinyshakespeare [--repeats N] [--no-wait]
"""

from __future__ import annotations

from bench.measure import Run, mib, save_table
from bench.variants import best, median, parse, ratio, target

WORKLOAD = ["--partition", "natural", "--model", "lstm", "--fraction-fit", "0.047"]
WORKLOAD += ["--local-steps", "50", "--batch-size", "10", "--lr", "0.8", "--momentum", "0"]
WORKLOAD += ["--val-fraction", "0", "--fraction-evaluate", "0", "--rounds", "3"]
VARIANTS = ("reference", "fedsim")


def later_rounds(run: Run) -> float:
    return median(run.round_seconds[1:])


def main() -> None:
    bench = parse(__doc__, WORKLOAD)
    bench.prepare()
    runs = bench.repeat(VARIANTS, "text")
    rows = [
        {
            "variant": variant,
            "wall_s": run.wall,
            "round1_s": run.round_seconds[0],
            "later_rounds_s": later_rounds(run),
            "central_eval_s": run.timings["central_evaluate"],
            "accuracy": run.final_accuracy,
            "peak_rss_mib": mib(run.peak_rss),
            "peak_pss_mib": mib(run.peak_pss),
            **run.conditions(),
        }
        for variant, variant_runs in runs.items()
        for run in variant_runs
    ]
    save_table("text_round", rows, bench.notes)
    seconds = {variant: best(rs, later_rounds) for variant, rs in runs.items()}
    rows = [
        target(
            "fedsim text round / plain loop round",
            ratio(seconds["fedsim"], seconds["reference"]),
            1.3,
        ),
        target("fedsim text round, s (under a minute)", seconds["fedsim"], 60),
        target(
            "fedsim peak PSS of all processes, MiB",
            mib(best(runs["fedsim"], lambda r: r.peak_pss)),
            4096,
        ),
    ]
    save_table("text_round_ratios", rows, [f"best undisturbed of {bench.repeats} run(s) each"])


if __name__ == "__main__":
    main()
