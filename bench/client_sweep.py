"""Client-count sweep: 2, 32, 128, 1,000, 10,000 and 50,000 IID clients over the whole
training set (every client each round up to 100 clients, 100 sampled a round beyond),
3 rounds, client evaluation off. At each count, in one invocation: the plain PyTorch
reference, Flower's own no-op floor (`FedAvg.start`, one engine node per client, clients
that do no work) and fedsim; seconds per round (the median after the first round) and
peak memory of the driver and every Ray process together; fedsim partitions cold (the
decoded data cached, the partitions not). Draws the seconds per round against the
client count (bench/results/client_sweep.png).

    python -m bench.client_sweep [--counts 2,32,128,1000,10000,50000] [--no-wait] [options]
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench.measure import RESULTS, Run, mib, save_table
from bench.variants import median, parse, ratio, recording_share, target

WORKLOAD = ["--rounds", "3", "--partition", "iid", "--local-epochs", "1", "--batch-size", "32"]
WORKLOAD += ["--fraction-evaluate", "0", "--val-fraction", "0"]
VARIANTS = ("reference", "noop", "fedsim")
PER_ROUND = 100  # clients sampled a round beyond this many


def steady_round(run: Run) -> float:
    return median(run.round_seconds[1:])


def _row(clients: int, variant: str, run: Run, reference: Run) -> dict:
    return {
        "clients": clients,
        "variant": variant,
        "wall_s": run.wall,
        "round1_s": run.round_seconds[0],
        "round_s": steady_round(run),
        "round_vs_reference": ratio(steady_round(run), steady_round(reference)),
        "partition_s": run.timings.get("partition"),
        "recording_share": recording_share(run) if variant == "fedsim" else None,
        "peak_rss_mib": mib(run.peak_rss),
        "peak_pss_mib": mib(run.peak_pss),
        "leaked_procs": len(run.leaked),
        **run.conditions(),
    }


def _plot(rows: list[dict]) -> None:
    figure, axis = plt.subplots(figsize=(6.5, 4))
    for variant, label in (
        ("reference", "plain PyTorch loop (the work itself)"),
        ("noop", "Flower's floor: FedAvg.start, no-op clients"),
        ("fedsim", "fedsim"),
    ):
        points = sorted((r["clients"], r["round_s"]) for r in rows if r["variant"] == variant)
        axis.plot(*zip(*points, strict=True), marker="o", label=label)
    axis.set_xscale("log")
    axis.set(xlabel="clients (100 a round beyond 100)", ylabel="seconds per round")
    axis.set_ylim(bottom=0)
    axis.grid(alpha=0.3)
    axis.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(RESULTS / "client_sweep.png", dpi=110)


def main() -> None:
    bench = parse(
        __doc__,
        WORKLOAD,
        lambda parser: parser.add_argument(
            "--counts", default="2,32,128,1000,10000,50000", help="client counts"
        ),
    )
    rows, ratios = [], []
    for clients in (int(count) for count in bench.args.counts.split(",")):
        fraction = min(1.0, PER_ROUND / clients)
        extra = ["--clients", str(clients), "--fraction-fit", f"{fraction:.6g}"]
        bench.prepare(extra)
        runs = {
            v: bench.run(v, f"sweep-{clients}-{v}", extra, cold_partitions=v == "fedsim")
            for v in VARIANTS
        }
        rows += [_row(clients, v, run, runs["reference"]) for v, run in runs.items()]
        measured = ratio(steady_round(runs["fedsim"]), steady_round(runs["reference"]))
        ratios.append(target(f"fedsim / plain loop per round, {clients} clients", measured, 1.2))
    save_table("client_sweep", rows, bench.notes)
    by_count = {r["clients"]: r for r in rows if r["variant"] == "fedsim"}
    floors = {r["clients"]: r for r in rows if r["variant"] == "noop"}
    if 50_000 in by_count:
        big = by_count[50_000]
        ratios.append(
            target(
                "fedsim round / Flower's floor, 50,000 clients",
                ratio(big["round_s"], floors[50_000]["round_s"]),
                0.25,
            )
        )
        ratios.append(target("fedsim cold partitioning s, 50,000 clients", big["partition_s"], 5))
        ratios.append(
            target(
                "recording (clients.csv, bytes) / round time, 50,000 clients",
                big["recording_share"],
                0.02,
            )
        )
        hundred = by_count.get(128)
        if hundred:
            growth = ratio(big["peak_rss_mib"], hundred["peak_rss_mib"])
            ratios.append(target("fedsim peak RSS, 50,000 / 128 clients", growth, 1.2))
    save_table("client_sweep_ratios", ratios, bench.notes)
    _plot(rows)


if __name__ == "__main__":
    main()
