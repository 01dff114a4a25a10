"""Client-count sweep: 2, 8, 32 and 128 IID clients over the whole training set, 2 rounds:
seconds per round and peak memory of the driver and Ray's processes together, for
fedsim and for the plain PyTorch reference doing the same work.

    python -m bench.client_sweep [--counts 2,8,32,128] [--no-wait] [simulate.py options]
"""

from __future__ import annotations

from bench.measure import Run, mib, save_table
from bench.variants import parse, ratio

WORKLOAD = ["--rounds", "2", "--partition", "iid", "--local-epochs", "1", "--batch-size", "32"]


def _row(clients: int, variant: str, run: Run, reference: Run) -> dict:
    rounds = run.round_seconds
    return {
        "clients": clients,
        "variant": variant,
        "wall_s": run.wall,
        "round1_s": rounds[0],
        "round2_s": rounds[-1],
        "round2_vs_reference": ratio(rounds[-1], reference.round_seconds[-1]),
        "accuracy": run.final_accuracy,
        "peak_rss_mib": mib(run.peak_rss),
        "peak_pss_mib": mib(run.peak_pss),
        "leaked_procs": len(run.leaked),
        **run.conditions(),
    }


def main() -> None:
    bench = parse(
        __doc__,
        WORKLOAD,
        lambda parser: parser.add_argument("--counts", default="2,8,32,128", help="clients"),
    )
    rows = []
    for clients in (int(count) for count in bench.args.counts.split(",")):
        extra = ["--clients", str(clients)]
        bench.prepare(extra)
        reference = bench.run("reference", f"sweep-{clients}-reference", extra)
        fedsim = bench.run("fedsim", f"sweep-{clients}-fedsim", extra)
        rows += [_row(clients, "reference", reference, reference)]
        rows += [_row(clients, "fedsim", fedsim, reference)]
    save_table("client_sweep", rows, bench.notes)


if __name__ == "__main__":
    main()
