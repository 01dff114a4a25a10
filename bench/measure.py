"""Measuring one run from the outside: wall time, CPU time and memory of its process tree.

Every variant a benchmark compares (the plain loop, the tutorial pattern, fedsim) runs
as its own `python ...` process, so its wall time includes interpreter start and
imports, exactly what a user waits for. Memory is sampled over the whole process tree:
with a private Ray instance the raylet, GCS and Ray's helpers are children of the
driver and the worker processes are children of the raylet, so one walk finds them all.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from fedsim.ground.files import CONFIG_JSON, ROUNDS_CSV

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
SCRATCH = RESULTS / "tmp"  # run folders and caches of benchmark runs (git-ignored)
OTHERS = "pytest|simulate.py|raylet"
MIB = 2**20
DISTURBED_CPU = 3.0  # seconds of others' CPU during a run that make it disturbed
OTHERS_EVERY = 10  # look at the rest of the machine every 10th memory sample


@dataclass
class Run:
    """What one measured process did: from outside (wall, CPU, memory) and inside
    (its run folder's rounds.csv and config.json)."""

    wall: float
    cpu: float  # user + system seconds of the tree's processes, as last sampled
    peak_rss: int  # bytes: the largest sum of RSS over the tree at one moment
    peak_pss: int  # the same with shared pages (Ray's object store) counted once
    rss_at_round: dict[int, int]  # tree RSS at the last sample taken while round r ran
    pss_at_round: dict[int, int]
    driver_rss_at_round: dict[int, int]  # the driver process's alone
    leaked: list[str]  # processes of the tree still alive after the run ended
    other_cpu: float  # CPU seconds other processes on the machine used meanwhile
    cpu_by_process: dict[str, float]  # CPU seconds by kind of process (driver, raylet, ...)
    rounds: list[dict[str, str]]
    timings: dict[str, Any]
    config: dict[str, Any]  # the run's config.json
    run_dir: Path
    load_before: float

    def column(self, name: str) -> list[float]:
        return [float(row[name]) for row in self.rounds if row.get(name)]

    def conditions(self) -> dict[str, Any]:
        """How quiet the machine was, for the tables."""
        return {
            "load_before": self.load_before,
            "other_cpu_s": self.other_cpu,
            "disturbed": self.disturbed,
        }

    @property
    def disturbed(self) -> bool:
        """Someone else computed alongside: a run to report, not to compare."""
        return self.other_cpu > max(DISTURBED_CPU, 0.1 * self.wall)

    @property
    def round_seconds(self) -> list[float]:
        return self.column("round_seconds")[1:] if self.rounds else []  # row 0 is the start

    @property
    def final_accuracy(self) -> float | None:
        """None for a run without central evaluation (Flower's no-op floor)."""
        accuracy = self.column("central_accuracy")
        return accuracy[-1] if accuracy else None


@dataclass
class _Sampler:
    """Polls the tree's memory until stopped; tags samples with the rounds completed."""

    root: int
    rounds_csv: Path
    interval: float
    seen: dict[int, tuple[float, str]] = field(default_factory=dict)
    cpu: dict[int, float] = field(default_factory=dict)
    peak_rss: int = 0
    peak_pss: int = 0
    at_round: dict[int, tuple[int, int, int]] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)
    started: float = field(default_factory=time.time)
    others: dict[tuple[int, float], tuple[float, float]] = field(default_factory=dict)

    def run(self) -> None:
        ticks = 0
        while not self.stop.wait(self.interval):
            self.sample()
            ticks += 1
            if ticks % OTHERS_EVERY == 0:
                self.watch_others()

    def watch_others(self) -> None:
        """CPU used so far by every process outside the tree (and this one)."""
        mine = {*self.seen, self.root, os.getpid()}
        with contextlib.suppress(psutil.NoSuchProcess):
            mine |= {child.pid for child in psutil.Process(self.root).children(recursive=True)}
        for proc in psutil.process_iter(["create_time", "cpu_times"]):
            if proc.pid in mine or proc.info["cpu_times"] is None:
                continue
            key = (proc.pid, proc.info["create_time"])
            cpu = proc.info["cpu_times"].user + proc.info["cpu_times"].system
            # a process born during the run used all of its CPU during the run
            first = self.others.get(key, (0.0 if key[1] > self.started else cpu,))[0]
            self.others[key] = (first, cpu)

    @property
    def other_cpu(self) -> float:
        return sum(last - first for first, last in self.others.values())

    def sample(self) -> None:
        try:
            root = psutil.Process(self.root)
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        rss = pss = driver = 0
        for proc in tree:
            try:
                info = proc.memory_full_info()
                times = proc.cpu_times()
                if proc.pid not in self.seen:
                    self.seen[proc.pid] = (proc.create_time(), " ".join(proc.cmdline())[:120])
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            rss += info.rss
            pss += info.pss
            driver = info.rss if proc.pid == self.root else driver
            self.cpu[proc.pid] = times.user + times.system
        self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
        done = _completed_rounds(self.rounds_csv)
        if done is not None and rss:  # rss 0: the tree has just exited
            self.at_round[done + 1] = (rss, pss, driver)

    def cpu_by_process(self) -> dict[str, float]:
        totals: dict[str, float] = {}
        for pid, seconds in self.cpu.items():
            kind = "driver" if pid == self.root else process_kind(self.seen[pid][1])
            totals[kind] = totals.get(kind, 0.0) + seconds
        return dict(sorted(totals.items(), key=lambda item: -item[1]))

    def leaked(self, patience: float = 10.0) -> list[str]:
        """Processes seen in the tree that outlive it by `patience` seconds."""
        deadline = time.monotonic() + patience
        while True:
            alive = [
                f"{pid} {cmd}"
                for pid, (created, cmd) in self.seen.items()
                if _alive(pid, created) and pid != self.root
            ]
            if not alive or time.monotonic() > deadline:
                return alive
            time.sleep(0.5)


RAY_HELPERS = {  # a fragment of the command line (at start or once renamed) -> kind
    "dashboard/agent.py": "dashboard agent",
    "ray::DashboardAgent": "dashboard agent",
    "runtime_env/agent/main.py": "runtime-env agent",
    "ray::RuntimeEnvAgent": "runtime-env agent",
    "dashboard/dashboard.py": "dashboard (API server)",
    "log_monitor.py": "log monitor",
    "autoscaler/_private/monitor.py": "autoscaler monitor",
    "default_worker.py": "ray worker",
    "ray::": "ray worker",  # ray::IDLE, ray::ClientAppActor.run, ...
}


def process_kind(cmdline: str) -> str:
    """What a process of the tree is: a Ray helper or worker, else its program's name."""
    kind = next((k for fragment, k in RAY_HELPERS.items() if fragment in cmdline), None)
    return kind or Path(cmdline.split(" ", 1)[0]).name


def _alive(pid: int, created: float) -> bool:
    try:
        proc = psutil.Process(pid)
        return proc.create_time() == created and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _completed_rounds(rounds_csv: Path) -> int | None:
    """The last round in rounds.csv (0 once the initial model is evaluated)."""
    try:
        lines = rounds_csv.read_text().splitlines()
    except OSError:
        return None
    return int(lines[-1].split(",", 1)[0]) if len(lines) > 1 else None


def measure(
    argv: list[str],
    run_dir: Path,
    env: dict[str, str] | None = None,
    interval: float = 0.5,
    timeout: float | None = None,
) -> Run:
    """Run `python ARGV` from the repository root; it must write its results to `run_dir`.
    Past `timeout` seconds it is stopped as a scheduler would (SIGTERM, then SIGKILL)."""
    load = os.getloadavg()[0]
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, *argv],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    sampler = _Sampler(proc.pid, run_dir / ROUNDS_CSV, interval)
    sampler.watch_others()
    thread = threading.Thread(target=sampler.run, daemon=True)
    thread.start()
    try:
        output = proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            output = proc.communicate(timeout=30)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            output = proc.communicate()[0]
        output += f"\n(stopped after {timeout:g} s)"
    wall = time.perf_counter() - started
    sampler.stop.set()
    thread.join()
    sampler.watch_others()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited with {proc.returncode}:\n{output[-3000:]}")
    with open(run_dir / ROUNDS_CSV, newline="") as handle:
        rounds = list(csv.DictReader(handle))
    config = json.loads((run_dir / CONFIG_JSON).read_text())
    return Run(
        wall=wall,
        cpu=sum(sampler.cpu.values()),
        cpu_by_process=sampler.cpu_by_process(),
        peak_rss=sampler.peak_rss,
        peak_pss=sampler.peak_pss,
        rss_at_round={r: m[0] for r, m in sampler.at_round.items() if r < len(rounds)},
        pss_at_round={r: m[1] for r, m in sampler.at_round.items() if r < len(rounds)},
        driver_rss_at_round={r: m[2] for r, m in sampler.at_round.items() if r < len(rounds)},
        leaked=sampler.leaked(),
        other_cpu=sampler.other_cpu,
        rounds=rounds,
        timings=config["timings_seconds"],
        config=config,
        load_before=load,
        run_dir=run_dir,
    )


def wait_until_quiet(max_wait: float = 1200.0, poll: float = 30.0, load: float = 0.5) -> str:
    """Block until no one else's tests, runs or Ray are busy on the machine and the
    1-minute load average is below `load`; returns how quiet it was, for the record.
    A matching process that used no CPU over a whole poll (a hung leftover) does not
    disturb a measurement: it is listed as idle instead of waited for."""
    started = time.monotonic()
    before: dict[int, float] = {}
    while True:
        now = _others_cpu()
        busy = [pid for pid, cpu in now.items() if cpu - before.get(pid, -1.0) > 0.1]
        idle = sorted(set(now) - set(busy))
        load1 = os.getloadavg()[0]
        waited = time.monotonic() - started
        quiet = not busy and load1 < load
        if quiet or waited > max_wait:
            return (
                f"{'quiet' if quiet else 'NOT QUIET'}: load {load1:.2f}, {len(busy)} busy other "
                f"runs, idle leftovers {idle}, waited {waited:.0f} s"
            )
        print(f"bench: waiting for quiet (load {load1:.2f}, {len(busy)} busy)", flush=True)
        before = now
        time.sleep(poll)


def _others_cpu() -> dict[int, float]:
    """CPU seconds so far of every process `pgrep -f OTHERS` finds, with its descendants
    (a run's driver idles while its Ray workers compute), by pid."""
    found = subprocess.run(["pgrep", "-f", OTHERS], capture_output=True, text=True).stdout
    cpu = {}
    for pid in map(int, found.split()):
        try:
            root = psutil.Process(pid)
            tree = [root, *root.children(recursive=True)]
            cpu[pid] = sum(sum(p.cpu_times()[:2]) for p in tree if p.is_running())
        except psutil.NoSuchProcess:
            continue
    return cpu


def mib(value: float) -> float:
    return round(value / MIB, 1)


def save_table(name: str, rows: list[dict[str, Any]], notes: list[str]) -> Path:
    """Print `rows` as an aligned table and write them to bench/results/<name>.csv;
    `notes` (the command, how quiet the machine was) go below the table as `#` lines."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True)))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)))
    for note in notes:
        print(f"# {note}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(cells)
        handle.writelines(f"# {note}\n" for note in notes)
    print(f"bench: wrote {path.relative_to(ROOT)}")
    return path


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)
