"""The things a benchmark compares, each one `python ...` process with simulate.py's
options, and the command line every benchmark script shares.

- reference: the plain PyTorch loop (bench/reference.py)
- tutorial: Flower's quickstart client pattern through fedsim's server (bench/tutorial_app.py)
- noop: Flower's own FedAvg.start, one node per client, clients that do no work (bench/noop_app.py)
- fedsim: `simulate.py` itself; fedsim-together: with --vectorize on
- ceiling: the compute ceiling, a round's images in one SGD step (bench/reference.py)
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.measure import SCRATCH, Run, measure, wait_until_quiet

COMMANDS = {
    "reference": ["-m", "bench.reference"],
    "tutorial": ["-m", "bench.tutorial_app"],
    "noop": ["-m", "bench.noop_app"],
    "fedsim": ["simulate.py"],
    "fedsim-together": ["simulate.py", "--vectorize", "on"],
    "ceiling": ["-m", "bench.reference", "--ceiling"],
}
WARM_CACHE = SCRATCH / "cache"  # decoded CIFAR-10 and partitions, shared by the variants
HF_CACHE = SCRATCH / "hf-datasets"  # the tutorial pattern's own (Arrow) cache


@dataclass
class Bench:
    """A benchmark's settings: the workload's simulate.py options plus the user's."""

    options: list[str]
    args: argparse.Namespace
    notes: list[str]

    @property
    def repeats(self) -> int:
        return self.args.repeats

    def run(
        self,
        variant: str,
        name: str,
        extra: Sequence[str] = (),
        cold: bool = False,
        cold_partitions: bool = False,
    ) -> Run:
        """Measure one variant on a quiet machine, its results in bench/results/tmp/runs;
        `cold`: with an empty data cache, so the run decodes and partitions first;
        `cold_partitions`: with the decoded data cached but no partitions."""
        cache = SCRATCH / "cold-cache" if cold or cold_partitions else WARM_CACHE
        if cold or cold_partitions:
            shutil.rmtree(cache, ignore_errors=True)
        if cold_partitions:
            cache.mkdir(parents=True)
            (cache / "decoded").symlink_to(WARM_CACHE / "decoded")
        if not self.args.no_wait:
            quiet = wait_until_quiet()
            self.notes.append(f"{name}: {quiet}")
            print(f"bench: {quiet}", flush=True)
        runs = SCRATCH / "runs"
        shutil.rmtree(runs / name, ignore_errors=True)
        argv = [*COMMANDS[variant], *self.options, *extra]
        argv += ["--results-dir", str(runs), "--name", name]
        print(f"bench: {name}: python {' '.join(argv)}", flush=True)
        env = {"FEDSIM_CACHE": str(cache), "HF_DATASETS_CACHE": str(HF_CACHE)}
        result = measure(argv, runs / name, env)
        print(
            f"bench: {name}: {result.wall:.1f} s wall, {result.cpu:.1f} s CPU, rounds "
            + " ".join(f"{s:.2f}" for s in result.round_seconds),
            flush=True,
        )
        for process in result.leaked:
            self.notes.append(f"{name}: left running: {process}")
            print(f"bench: {name}: left running: {process}", flush=True)
        return result

    def repeat(self, variants: Sequence[str], prefix: str) -> dict[str, list[Run]]:
        """Every variant, --repeats times, interleaved (a drift hits them all alike)."""
        runs: dict[str, list[Run]] = {variant: [] for variant in variants}
        for repeat in range(1, self.repeats + 1):
            for variant in variants:
                runs[variant].append(self.run(variant, f"{prefix}-{variant}-{repeat}"))
        return runs

    def prepare(self, extra: Sequence[str] = (), tutorial: bool = False) -> None:
        """Fill the warm caches, untimed: decoded data and partitions (and the tutorial
        pattern's Arrow cache, which flwr-datasets builds on first use)."""
        from bench.reference import config_from
        from fedsim.runner.inputs import load_data

        os.environ["HF_DATASETS_CACHE"] = str(HF_CACHE)
        os.environ["FEDSIM_CACHE"] = str(WARM_CACHE)  # the variants' own (run(): env)
        cfg = config_from([*self.options, *extra])
        load_data(cfg)
        if tutorial:
            from bench.tutorial_app import federated_dataset

            federated_dataset(str(Path(cfg.data).resolve()), cfg.clients).load_partition(0)


def parse(
    description: str,
    workload: list[str],
    more: Callable[[argparse.ArgumentParser], object] = lambda parser: None,
) -> Bench:
    """`--data`, `--repeats`, `--no-wait` and the script's `more` options; any other
    option goes to every variant after the workload's own (`--rounds 1` shrinks a
    benchmark for a smoke test)."""
    parser = argparse.ArgumentParser(description=description)
    more(parser)
    parser.add_argument("--data", default="../shared/data/cifar10", help="CIFAR-10 source")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each variant")
    parser.add_argument(
        "--no-wait",
        action="store_true",
        help="measure at once instead of waiting for a quiet machine (smoke tests)",
    )
    args, rest = parser.parse_known_args()
    options = [*workload, "--data", args.data, *rest]
    command = " ".join([f"python -m bench.{Path(sys.argv[0]).stem}", *sys.argv[1:]])
    return Bench(options, args, [f"command: {command}"])


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def best(runs: list[Run], value: Callable[[Run], float]) -> float:
    """The least disturbed figure of repeated runs: the minimum over the runs no one
    else computed alongside (over all of them if every one was disturbed)."""
    calm = [run for run in runs if not run.disturbed] or runs
    return min(value(run) for run in calm)


def recording_share(run: Run) -> float:
    """clients.csv and byte counting's share of the round time: the server's own
    recording time, plus the clients' (measuring their replies) spread over the actors
    that run side by side."""
    actors = run.config.get("cluster", {}).get("concurrent_clients", 1)
    spent = run.timings["recording"] + run.timings["recording_in_clients"] / actors
    return ratio(spent, run.timings["rounds"])


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def target(
    comparison: str, value: float, at_most: float | None = None, at_least: float | None = None
) -> dict:
    """A row of a ratios table: the measured value against the issue's bound."""
    bound = f"≤ {at_most:g}" if at_most is not None else f"≥ {at_least:g}"
    met = value <= at_most if at_most is not None else value >= at_least
    return {"comparison": comparison, "measured": value, "target": bound, "met": met}
