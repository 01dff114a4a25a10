"""Shared fixtures: small generated CIFAR-shaped data, a private cache, a CLI runner."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_CIFAR = Path(
    os.environ.get("FEDSIM_TEST_CIFAR", ROOT.parent / "shared" / "data" / "cifar10")
)
SHARED_HEART = SHARED_CIFAR.parent / "heart_disease"  # UCI's four centres, beside it
RAY_RESOURCES = "RAY_OVERRIDE_RESOURCES"  # Ray's override of a node's resources (JSON)


def write_cifar_batches(folder: Path, train: int, test: int, seed: int = 0) -> Path:
    """A torchvision-style cifar-10-batches-py folder of learnable synthetic images:
    each class is a noisy colour pattern, so a model can beat chance in one round."""
    rng = np.random.default_rng(seed)
    prototypes = rng.integers(0, 256, size=(10, 3072))

    def batch(count: int) -> dict:
        labels = rng.integers(0, 10, size=count)
        noise = rng.integers(-60, 61, size=(count, 3072))
        data = np.clip(prototypes[labels] + noise, 0, 255).astype(np.uint8)
        return {"data": data, "labels": labels.tolist()}

    folder.mkdir(parents=True, exist_ok=True)
    per_batch = train // 5
    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch(per_batch)))
    (folder / "test_batch").write_bytes(pickle.dumps(batch(test)))
    meta = {"label_names": [f"class{i}" for i in range(10)]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))
    return folder


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` run only where PyTorch sees a CUDA device."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def in_a_run():
    """Flower makes messages only inside a run (the ServerApp's); outside the engine,
    pretend to be in one (fedsim.ground.insides, as every private name of Flower's)."""
    from fedsim.ground import insides

    with insides.in_a_run():
        yield


@pytest.fixture(scope="session")
def tiny_cifar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1,000 training and 200 test images in the cifar-10-batches-py layout."""
    return write_cifar_batches(tmp_path_factory.mktemp("data") / "cifar-10-batches-py", 1000, 200)


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every test (and every subprocess it starts) caches under a throwaway folder."""
    cache = tmp_path_factory.mktemp("cache")
    os.environ["FEDSIM_CACHE"] = str(cache)
    return cache


@pytest.fixture(scope="session", autouse=True)
def one_cpu_per_ray_instance() -> None:
    """pytest's workers share the machine's cores (pyproject.toml): each private Ray
    instance (every run's, in whichever process) is given one CPU (Ray's own override of
    a node's resources), hence one client actor, where the machine's two CPUs would give
    two; a second actor is one more process importing torch (seconds of CPU).
    A test of several actors asks for them (`--cpus-per-client 0.5`, or `all_cpus`); a
    cluster of its own is started without the override (tests/test_cluster.py)."""
    os.environ[RAY_RESOURCES] = json.dumps({"CPU": 1})


@pytest.fixture
def all_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test's runs get every CPU of the machine, as a user's do (no override)."""
    monkeypatch.delenv(RAY_RESOURCES)


@pytest.fixture
def shared_cifar() -> Path:
    if not (SHARED_CIFAR / "plain_text").is_dir():
        pytest.fail(f"real CIFAR-10 not found at {SHARED_CIFAR}; set FEDSIM_TEST_CIFAR")
    return SHARED_CIFAR


@pytest.fixture
def shared_heart() -> Path:
    if not (SHARED_HEART / "processed.cleveland.data").is_file():
        pytest.fail(f"UCI Heart Disease not found at {SHARED_HEART}")
    return SHARED_HEART


def client_state_rows(run: Path) -> list[tuple[int, int, bytes]]:
    """A run's client_states.sqlite: (partition id, round written, serialized state)."""
    with contextlib.closing(sqlite3.connect(run / "client_states.sqlite")) as db:
        return db.execute("SELECT pid, round, state FROM states ORDER BY pid, round").fetchall()


# The result files' wall-clock columns: what differs between two runs of the same numbers
WALL_CLOCK = {"rounds.csv": "round_seconds", "clients.csv": "seconds"}


def computed(run_dir: Path, name: str) -> pd.DataFrame:
    """A run's rounds.csv or clients.csv less its wall-clock column: what it computed."""
    return pd.read_csv(run_dir / name).drop(columns=[WALL_CLOCK[name]])


def run_cli(*args: str, timeout: float = 600, **kwargs) -> subprocess.CompletedProcess:
    """`python simulate.py ARGS` in a subprocess, as a user runs it."""
    return subprocess.run(
        [sys.executable, str(ROOT / "simulate.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        **kwargs,
    )


def simulate(data: Path, results: Path, name: str, options: str, **kwargs):
    """Run `simulate.py OPTIONS` on `data` into results/name; the process and its CSV
    (None when the run wrote none)."""
    done = run_cli(
        *options.split(),
        "--data",
        str(data),
        "--results-dir",
        str(results),
        "--name",
        name,
        **kwargs,
    )
    csv = results / name / "rounds.csv"
    return done, (pd.read_csv(csv) if csv.exists() else None)


@pytest.fixture
def start_run():
    """Start `simulate.py ARGS` in its own process group (like a job in a terminal), with
    a private temp folder (Ray's and the process's) that every Ray process of the run
    names on its command line; teardown kills whatever is left of both, whatever the test did."""
    started: list[tuple[subprocess.Popen, Path]] = []

    def start(args: list[str]) -> tuple[subprocess.Popen, Path]:
        ray_tmp = Path(tempfile.mkdtemp(prefix="fsr", dir="/tmp"))
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "simulate.py"), *args],
            cwd=ROOT,
            env={**os.environ, "RAY_TMPDIR": str(ray_tmp), "TMPDIR": str(ray_tmp)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        started.append((process, ray_tmp))
        return process, ray_tmp

    yield start
    for process, ray_tmp in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        subprocess.run(["pkill", "-9", "-f", str(ray_tmp)], check=False)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def leftovers(ray_tmp: Path) -> list[str]:
    """`pid command` of every live process of the run started with this Ray temp folder:
    Ray's own processes name it on their command line; its workers, which rename
    themselves (`ray::ClientAppActor.run`), have it in their environment."""
    marker = f"RAY_TMPDIR={ray_tmp}".encode()
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            environment = (proc / "environ").read_bytes()
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z" and (str(ray_tmp) in command or marker in environment.split(b"\0")):
            found.append(f"{proc.name} {command}")
    return found


def leftovers_until(ray_tmp: Path, wanted: Callable[[list[str]], bool], limit: float) -> list[str]:
    """`leftovers`, looked at again until `wanted` holds of them or `limit` seconds pass:
    a run's processes start and end a moment after what starts or ends them."""
    deadline = time.monotonic() + limit
    found = leftovers(ray_tmp)
    while not wanted(found) and time.monotonic() < deadline:
        time.sleep(0.2)
        found = leftovers(ray_tmp)
    return found


def sentinel_notes_left(folder: Path, limit: float = 10) -> list[Path]:
    """The sentinel's notes files still in temp folder `folder` after up to `limit`
    seconds: each sentinel removes its own as it leaves."""
    from fedsim.flower.node_watch import NOTES_PREFIX

    deadline = time.monotonic() + limit
    while (left := list(folder.glob(f"{NOTES_PREFIX}*"))) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def wait_for_rounds(csv_path: Path, rounds: int, process: subprocess.Popen, limit: float = 180):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if csv_path.exists() and len(pd.read_csv(csv_path)) >= rounds + 1:
            return
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    raise AssertionError(f"{csv_path} never reached round {rounds}")


def run_in_terminal(*args: str, timeout: float = 600) -> tuple[int, str]:
    """`python simulate.py ARGS` with its stdout on a terminal (a pseudo-terminal, as a
    user's shell gives it); its exit code and what the terminal received."""
    import pty
    import select

    primary, secondary = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "simulate.py"), *args],
        cwd=ROOT,
        stdout=secondary,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    os.close(secondary)
    received, deadline = bytearray(), time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([primary], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # the terminal's other side closed: the process has ended
                break
            if not chunk:
                break
            received += chunk
        elif process.poll() is not None:
            break
    os.close(primary)
    process.wait(timeout=max(1.0, deadline - time.monotonic()))
    return process.returncode, received.decode(errors="replace")
