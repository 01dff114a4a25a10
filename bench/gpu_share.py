"""Fractional GPU allocation on a real GPU: how many clients should share one GPU?

For each workload, in one invocation: the plain PyTorch loop on the GPU (the
reference), then fedsim at each `--gpus-per-client` share, each its own process, while
nvidia-smi samples the GPU's utilisation and memory (and, where the machine lets it see
them, each process's memory). Then the seed job (`simulate.py --clients 2 --rounds 3`)
on the GPU, with the share fedsim picks itself.

    python -m bench.gpu_share [--shares 1,0.5,0.25,0.1] [--cross-device-rounds 12]
                              [--niid-rounds 2] [--data DIR] [simulate.py options]

Workloads (bench/cross_device.py's and bench/niid_round.py's, fewer rounds):
- cross-device: 1,000 clients of 50 images, 50 a round, batch 10 (seconds per round:
  the median from round 2 on, once the actors are warm);
- niid: a NIID-Bench round, 10 parties × 10 local epochs, batch 64 (the last round).

Writes bench/results/gpu_share.csv (a row per run) and bench/results/gpu_share.md (the
tables for docs/performance.md); run folders, actor logs and the raw nvidia-smi samples
go to bench/results/tmp/gpu-share/.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench import cross_device, niid_round
from bench.measure import RESULTS, SCRATCH, Run, measure, mib
from fedsim.flower.actor_log import ENV as ACTOR_LOG

OUT = SCRATCH / "gpu-share"
SAMPLE_SECONDS = 0.5


class GpuSampler:
    """nvidia-smi in the background: the GPU's utilisation and memory every half
    second, the compute processes' memory every second, each sample tagged with the
    run under way (`label`)."""

    def __init__(self, folder: Path) -> None:
        self.label = ""
        self.gpu: list[dict] = []  # time, label, util %, memory MiB
        self.processes: list[dict] = []  # time, label, pid, memory MiB
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._gpu, daemon=True),
            threading.Thread(target=self._processes, daemon=True),
        ]
        self.folder = folder

    def __enter__(self) -> GpuSampler:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        for name, rows in (("gpu_samples.csv", self.gpu), ("gpu_processes.csv", self.processes)):
            _write_csv(self.folder / name, rows)

    def _query(self, args: list[str]) -> list[list[str]]:
        try:
            text = subprocess.run(
                ["nvidia-smi", *args, "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout
        except (OSError, subprocess.TimeoutExpired):
            return []
        return [[cell.strip() for cell in line.split(",")] for line in text.splitlines() if line]

    def _gpu(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            for util, memory in self._query(["--query-gpu=utilization.gpu,memory.used"]):
                self.gpu.append(
                    {"time": time.time(), "label": self.label, "util": float(util), "mib": memory}
                )

    def _processes(self) -> None:
        while not self._stop.wait(2 * SAMPLE_SECONDS):
            for row in self._query(["--query-compute-apps=pid,used_memory"]):
                if len(row) == 2 and row[0].isdigit():
                    pid, memory = int(row[0]), _number(row[1])
                    sample = {"time": time.time(), "label": self.label, "pid": pid, "mib": memory}
                    self.processes.append(sample)

    def during(self, label: str) -> dict:
        """Utilisation and memory while `label` ran."""
        util = [s["util"] for s in self.gpu if s["label"] == label]
        memory = [_number(s["mib"]) for s in self.gpu if s["label"] == label]
        busy = [u for u in util if u > 0]
        return {
            "gpu_util_mean_pct": statistics.fmean(util) if util else None,
            "gpu_util_busy_mean_pct": statistics.fmean(busy) if busy else None,
            "gpu_util_max_pct": max(util, default=None),
            "gpu_mem_max_mib": max((m for m in memory if m is not None), default=None),
        }

    def process_memory(self, label: str, pids: set[int]) -> float | None:
        """The median over `pids` of each process's largest GPU memory while `label`
        ran (None where nvidia-smi shows no processes, as in some virtual machines)."""
        peak: dict[int, float] = {}
        for sample in self.processes:
            if sample["label"] == label and sample["pid"] in pids and sample["mib"] is not None:
                peak[sample["pid"]] = max(peak.get(sample["pid"], 0.0), sample["mib"])
        return statistics.median(peak.values()) if peak else None


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(rows)


def _actors(folder: Path) -> tuple[set[int], list[float]]:
    """The actor processes that ran clients, and the GPU memory torch reserved in each
    (fedsim.flower.actor_log)."""
    calls = [
        json.loads(line) for log in folder.glob("*.jsonl") for line in log.read_text().splitlines()
    ]
    reserved: dict[int, float] = {}
    for call in calls:
        reserved[call["pid"]] = max(reserved.get(call["pid"], 0.0), call.get("cuda_reserved", 0))
    return set(reserved), list(reserved.values())


def _per_round(workload: str, run: Run) -> float:
    if workload == "niid":
        return niid_round.round_2(run)
    return cross_device.steady_round(run)


def run_one(
    sampler: GpuSampler, workload: str, variant: str, argv: list[str], timeout: float
) -> dict:
    """Measure one process; a failure is a row that says so, not the end of the sweep."""
    label = re.sub(r"[^\w.]+", "-", f"{workload} {variant}").strip("-")
    runs, logs = OUT / "runs", OUT / "actors" / label
    shutil.rmtree(runs / label, ignore_errors=True)
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir(parents=True)
    argv = [*argv, "--results-dir", str(runs), "--name", label]
    print(f"gpu_share: {label}: python {' '.join(argv)}", flush=True)
    sampler.label = label
    row: dict = {"workload": workload, "variant": variant}
    try:
        run = measure(argv, runs / label, {ACTOR_LOG: str(logs)}, timeout=timeout)
    except (RuntimeError, OSError, ValueError) as error:
        print(f"gpu_share: {label} failed: {error}", flush=True)
        return {**row, "error": str(error).splitlines()[0][:200]}
    finally:
        sampler.label = ""
    pids, reserved = _actors(logs)
    cluster = run.config.get("cluster", {})
    sampled = statistics.median(run.column("clients_sampled")[1:] or [0])
    seconds = _per_round(workload, run)
    row |= {
        "gpus_per_client": cluster.get("client_resources", {}).get("num_gpus"),
        "clients_at_once": cluster.get("concurrent_clients"),
        "wall_s": run.wall,
        "round1_s": run.round_seconds[0],
        "round_s": seconds,
        "clients_per_s": sampled / seconds if seconds else None,
        "accuracy": run.final_accuracy,
        "actors": len(pids),
        "actor_torch_reserved_mib": statistics.median(reserved) / 2**20 if reserved else None,
        "actor_gpu_mib": sampler.process_memory(label, pids),
        "peak_rss_mib": mib(run.peak_rss),
        **sampler.during(label),
    }
    print(f"gpu_share: {label}: {json.dumps(row)}", flush=True)
    return row


def workloads(args: argparse.Namespace) -> dict[str, list[str]]:
    cross = [*cross_device.WORKLOAD]
    cross[cross.index("--rounds") + 1] = str(args.cross_device_rounds)
    niid = [*niid_round.WORKLOAD]
    niid[niid.index("--rounds") + 1] = str(args.niid_rounds)
    return {"cross-device": cross, "niid": niid}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shares", default="1,0.5,0.25,0.1", help="--gpus-per-client values")
    parser.add_argument("--cross-device-rounds", type=int, default=12)
    parser.add_argument("--niid-rounds", type=int, default=2)
    parser.add_argument("--data", default="../shared/data/cifar10", help="CIFAR-10 source")
    parser.add_argument("--timeout", type=float, default=240, help="seconds a run may take")
    parser.add_argument("--skip-seed-job", action="store_true")
    parser.add_argument(
        "--device", default="cuda", help="the plain loop's device (cpu: a dry run without a GPU)"
    )
    args, rest = parser.parse_known_args()
    shares = [share.strip() for share in args.shares.split(",")]
    runs: list[tuple[str, str, list[str]]] = []  # workload, variant, argv
    for workload, options in workloads(args).items():
        options = [*options, "--data", args.data, *rest]
        reference = ["-m", "bench.reference", *options, "--device", args.device]
        runs.append((workload, f"plain loop ({args.device})", reference))
        for share in shares:
            argv = ["simulate.py", *options, "--gpus-per-client", share]
            runs.append((workload, f"fedsim {share}", argv))
    if not args.skip_seed_job:
        seed = ["simulate.py", "--clients", "2", "--rounds", "3", "--data", args.data, *rest]
        runs.append(("seed job", "fedsim auto", seed))
    command = " ".join(["python -m bench.gpu_share", *sys.argv[1:]])
    rows = []
    with GpuSampler(OUT) as sampler:
        for workload, variant, argv in runs:
            rows.append(run_one(sampler, workload, variant, argv, args.timeout))
            # written after every run: a sweep cut short keeps what it measured
            _write_csv(RESULTS / "gpu_share.csv", rows)
            (RESULTS / "gpu_share.md").write_text(report(rows, command))
    print((RESULTS / "gpu_share.md").read_text())


def _fmt(value: object, digits: int = 2) -> str:
    if value is None or value == "":
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def report(rows: list[dict], command: str) -> str:
    """The tables docs/performance.md shows: per workload, each run against the plain
    loop on the same GPU."""
    gpu = _gpu_name()
    lines = [f"# GPU share sweep (`{command}`)", "", f"GPU: {gpu}", ""]
    for workload in dict.fromkeys(row["workload"] for row in rows):
        group = [row for row in rows if row["workload"] == workload]
        loop = next((r["round_s"] for r in group if r["variant"].startswith("plain")), None)
        lines += [f"## {workload}", ""]
        lines += [
            "| run | GPU per client | clients at once | s/round | clients/s | × plain loop "
            "| GPU util (mean, busy mean) | GPU memory peak MiB | per actor MiB (torch, "
            "nvidia-smi) | wall s | accuracy |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in group:
            if "error" in row:
                lines.append(f"| {row['variant']} | failed: {row['error']} |")
                continue
            versus = row["round_s"] / loop if loop and row.get("round_s") else None
            lines.append(
                f"| {row['variant']} | {_fmt(row.get('gpus_per_client'))} "
                f"| {_fmt(row.get('clients_at_once'))} | {_fmt(row['round_s'])} "
                f"| {_fmt(row['clients_per_s'], 1)} | {_fmt(versus)} "
                f"| {_fmt(row['gpu_util_mean_pct'], 0)}, {_fmt(row['gpu_util_busy_mean_pct'], 0)} "
                f"| {_fmt(row['gpu_mem_max_mib'], 0)} "
                f"| {_fmt(row['actor_torch_reserved_mib'], 0)}, {_fmt(row['actor_gpu_mib'], 0)} "
                f"| {_fmt(row['wall_s'], 1)} | {_fmt(row['accuracy'], 4)} |"
            )
        lines.append("")
    return "\n".join(lines)


def _gpu_name() -> str:
    try:
        return subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except OSError:
        return "none (nvidia-smi not found)"


if __name__ == "__main__":
    main()
