"""Clients with a memory at cross-device scale: what SCAFFOLD's control variates cost
beyond FedAvg, and whether that cost grows with the rounds or the population.

Two settings, each in one invocation (client evaluation off, 100 clients a round):

- 1,000 IID clients of 50 images, batch 10: FedAvg and SCAFFOLD for 12 and for 48
  rounds; the whole process's wall time, the rounds' (rounds.csv), the sizes of
  checkpoint.pt and client_states.sqlite at the end. Targets: SCAFFOLD's whole process
  within 1.25 × FedAvg's at both lengths (the gap does not grow with the rounds).
- 50,000 clients of one image, SCAFFOLD, 50 rounds: seconds per round and the driver's
  memory (RSS) while round 5 and while round 50 run. Targets: within 10 %.

    python -m bench.client_states [--no-wait] [--data DIR] [options]
"""

from __future__ import annotations

import statistics

from bench.measure import Run, mib, save_table
from bench.variants import parse, ratio, target
from fedsim.ground.files import CHECKPOINT, CLIENT_STATES

WORKLOAD = ["--partition", "iid", "--local-epochs", "1", "--batch-size", "10"]
WORKLOAD += ["--fraction-evaluate", "0", "--val-fraction", "0"]
PER_ROUND = 100
MANY = {"clients": 1_000, "lengths": (12, 48)}  # 50 images each
HUGE = {"clients": 50_000, "rounds": 50, "early": 5}  # one image each
WITHIN = 0.10  # the 50,000-client run's drift between an early and the last round


def _federation(clients: int, rounds: int, strategy: str) -> list[str]:
    fraction = f"{PER_ROUND / clients:.6g}"
    options = ["--clients", str(clients), "--fraction-fit", fraction, "--rounds", str(rounds)]
    return [*options, "--strategy", strategy]


def _sizes(run: Run) -> dict[str, float]:
    folder = run.run_dir
    store = folder / CLIENT_STATES
    return {
        "checkpoint_mb": (folder / CHECKPOINT).stat().st_size / 1e6,
        "client_states_mb": store.stat().st_size / 1e6 if store.exists() else 0.0,
    }


def _row(setting: str, strategy: str, rounds: int, run: Run) -> dict:
    return {
        "setting": setting,
        "strategy": strategy,
        "rounds": rounds,
        "wall_s": run.wall,
        "rounds_s": sum(run.round_seconds),
        "outside_rounds_s": run.wall - sum(run.round_seconds),
        "peak_driver_rss_mib": mib(max(run.driver_rss_at_round.values(), default=0)),
        **_sizes(run),
        "final_accuracy": run.final_accuracy,
        **run.conditions(),
    }


def _mean_round(run: Run, first: int, last: int) -> float:
    """Mean seconds of rounds first..last (rounds.csv's round_seconds)."""
    return statistics.mean(run.round_seconds[first - 1 : last])


def main() -> None:
    bench = parse(__doc__, WORKLOAD)
    rows, ratios = [], []
    clients = MANY["clients"]
    bench.prepare(_federation(clients, 1, "fedavg"))
    for rounds in MANY["lengths"]:
        runs = {
            strategy: bench.run(
                "fedsim",
                f"states-{clients}-{strategy}-{rounds}",
                _federation(clients, rounds, strategy),
            )
            for strategy in ("fedavg", "scaffold")
        }
        rows += [_row(f"{clients} clients", s, rounds, run) for s, run in runs.items()]
        whole = ratio(runs["scaffold"].wall, runs["fedavg"].wall)
        ratios.append(target(f"SCAFFOLD / FedAvg whole process, {rounds} rounds", whole, 1.25))

    clients, rounds, early = HUGE["clients"], HUGE["rounds"], HUGE["early"]
    options = _federation(clients, rounds, "scaffold")
    bench.prepare(options)
    huge = bench.run("fedsim", f"states-{clients}-scaffold-{rounds}", options)
    rows.append(_row(f"{clients} clients", "scaffold", rounds, huge))
    window = 5  # rounds averaged: around round `early` (round 1 warms up) and the last ones
    first = early - window // 2
    late = _mean_round(huge, rounds - window + 1, rounds)
    seconds = ratio(late, _mean_round(huge, first, first + window - 1))
    memory = ratio(huge.driver_rss_at_round[rounds], huge.driver_rss_at_round[early])
    name = f"{clients} clients, SCAFFOLD"
    ratios.append(
        target(
            f"{name}: s per round, rounds {rounds - window + 1}-{rounds} / "
            f"{first}-{first + window - 1}",
            seconds,
            1 + WITHIN,
        )
    )
    ratios.append(
        target(f"{name}: driver RSS while round {rounds} / round {early} runs", memory, 1 + WITHIN)
    )
    save_table("client_states", rows, bench.notes)
    save_table("client_states_ratios", ratios, bench.notes)


if __name__ == "__main__":
    main()
