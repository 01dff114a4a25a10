"""fedsim on a Ray cluster it did not start: a head node made with Ray's own `ray start`.

The head is this test module's own (loopback only, free ports, a temp dir of its own)
and declares 4 CPUs and one logical GPU, which is all Ray needs to schedule fractional
GPU shares; this machine has no CUDA, so the clients train on CPU and say so.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import RAY_RESOURCES, WALL_CLOCK, computed, simulate
from tests.services import LOOPBACK_ONLY, Services, free_port, wait_for

_FORWARDED = re.compile(r"(\x1b\[\d+m)?\((pid=)?(raylet|gcs_server)[^)]*\)")
_LOOPBACK_HEX = {"0100007F", "0000000000000000FFFF00000100007F"}  # as /proc/net/tcp* has it


@dataclass(frozen=True)
class Head:
    address: str
    actor_log: Path
    driver_env: dict[str, str]


def _ray_start_args(port: int, temp_dir: str, cpus: int = 4, gpus: int = 1) -> list[str]:
    """`ray start --head` on loopback, every port its own."""
    args = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block"]
    args += ["--port", str(port), "--temp-dir", temp_dir, "--include-dashboard", "false"]
    args += ["--num-cpus", str(cpus), "--num-gpus", str(gpus)]
    for option in ("--ray-client-server-port", "--dashboard-port"):
        args += [option, str(free_port())]
    return args + _node_args()


def _node_args() -> list[str]:
    """What a head and a worker node both take: loopback, and free ports of their own
    (two nodes on one machine must not share one)."""
    args = ["--node-ip-address", "127.0.0.1", "--disable-usage-stats"]
    args += ["--min-worker-port", "0", "--max-worker-port", "0"]
    for option in (
        "--node-manager-port",
        "--object-manager-port",
        "--metrics-export-port",
        "--dashboard-agent-listen-port",
        "--dashboard-agent-grpc-port",
        "--runtime-env-agent-port",
    ):
        args += [option, str(free_port())]
    return args


def _node_env() -> dict[str, str]:
    """A node's environment: the CPUs it is started with (not the suite's override for
    private instances, conftest.py), and no metrics (nothing here reads them: on a
    loaded machine the head's raylet can give up on its metrics agent and say so on
    every attached driver's stderr)."""
    env = {k: v for k, v in os.environ.items() if k != RAY_RESOURCES}
    return env | {"RAY_enable_metrics_collection": "0"}


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory):
    """`ray start --head --block` in a process group of its own, stopped (all of it) after."""
    folder = tmp_path_factory.mktemp("cluster")
    actor_log = folder / "actors"
    actor_log.mkdir()
    temp_dir = tempfile.mkdtemp(prefix="r", dir="/tmp")  # Ray's socket paths must stay short
    port = free_port()
    services = Services()
    log = folder / "ray-head.log"
    env = {**_node_env(), **LOOPBACK_ONLY, "FEDSIM_ACTOR_LOG": str(actor_log)}
    try:
        process = services.start(_ray_start_args(port, temp_dir), log, env=env)
        wait_for(process, log, "Ray runtime started", timeout=120)
        assert set(_listening_on(port)) <= _LOOPBACK_HEX and _listening_on(port)
        yield Head(f"127.0.0.1:{port}", actor_log, driver_env={**os.environ, **LOOPBACK_ONLY})
        assert process.poll() is None, "the head node died during the tests"
    finally:
        survivors = services.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert not survivors, f"processes left running: {survivors}"


def _listening_on(port: int) -> list[str]:
    """The local addresses of the listening TCP sockets on `port`."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            address, _, hex_port = row.split()[1].partition(":")
            if row.split()[3] == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.append(address)
    return found


def _still_serving(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    with socket.socket() as probe:
        return probe.connect_ex((host, int(port))) == 0


def _own_lines(stderr: str) -> list[str]:
    """stderr less what Ray forwards from the cluster's own processes ("(raylet) …"):
    the cluster's messages are not fedsim's to silence."""
    return [line for line in stderr.strip().splitlines() if not _FORWARDED.match(line)]


def _actor_calls(folder: Path) -> list[dict]:
    return [json.loads(line) for f in folder.glob("*.jsonl") for line in f.read_text().splitlines()]


def test_two_clients_on_an_existing_cluster(head: Head, tiny_cifar: Path, tmp_path: Path) -> None:
    options = f"--ray-address {head.address} --clients 2 --rounds 2"
    done, frame = simulate(tiny_cifar, tmp_path, "on-cluster", options, env=head.driver_env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    # One logical GPU and no --gpus-per-client: fedsim picks a share and says so
    assert "0.5 GPU per client (2 side by side on each GPU)" in done.stdout
    assert frame["round"].tolist() == [0, 1, 2]
    assert frame["clients_sampled"].tolist() == [0, 2, 2]
    assert (frame["clients_failed"] == 0).all()
    assert frame.loc[1:, "train_loss"].notna().all()
    config = json.loads((tmp_path / "on-cluster" / "config.json").read_text())
    assert config["status"] == "complete"
    assert config["cluster"]["started_here"] is False
    # No CUDA here: each actor trains on CPU after one warning line
    assert "given a GPU but sees no CUDA device; training on CPU" in done.stdout + done.stderr
    # fedsim disconnected but left the cluster running
    assert _still_serving(head.address)


def test_four_clients_share_one_gpu(head: Head, tiny_cifar: Path, tmp_path: Path) -> None:
    """What the actors themselves report: four of them at once, each holding 1/4 GPU."""
    for old in head.actor_log.glob("*.jsonl"):
        old.unlink()
    options = f"--ray-address {head.address} --clients 4 --rounds 2 --gpus-per-client 0.25"
    options += " --fraction-evaluate 0 --local-epochs 8"  # calls long enough to overlap
    done, _ = simulate(tiny_cifar, tmp_path, "shared-gpu", options, env=head.driver_env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "4 clients run at a time (1 CPU, 0.25 GPU each)" in done.stdout
    calls = [c for c in _actor_calls(head.actor_log) if c["kind"] == "train"]
    assert len(calls) == 8  # 4 clients x 2 rounds
    assert len({c["pid"] for c in calls}) == 4  # four actors
    for call in calls:
        assert call["resources"]["GPU"] == pytest.approx(0.25)
        assert call["gpu_ids"] == ["0"] and call["cuda_visible_devices"] == "0"
        assert call["cuda"] is False  # a logical GPU: trained on CPU, after the warning
    assert "given a GPU but sees no CUDA device; training on CPU" in done.stdout + done.stderr
    most_at_once = max(
        sum(other["start"] <= call["start"] < other["end"] for other in calls) for call in calls
    )
    assert most_at_once == 4


def test_gpu_share_the_cluster_cannot_give(head: Head, tiny_cifar: Path, tmp_path: Path) -> None:
    options = f"--ray-address {head.address} --gpus-per-client 2 --clients 2"
    done, frame = simulate(tiny_cifar, tmp_path, "too-many", options, env=head.driver_env)
    assert done.returncode == 2
    assert _own_lines(done.stderr) == [
        f"error: --gpus-per-client: got 2, but Ray has 1 GPUs on the cluster at {head.address}; "
        "use 0, or declare GPUs on the cluster's nodes (ray start --num-gpus N)"
    ]
    assert frame is None and not (tmp_path / "too-many").exists()
    assert _still_serving(head.address)


# --- two nodes: a head and a worker node, each with its own CPU (issue 27) ---------------

USER_CODE = '''
"""A user's model and algorithm, kept in the user's own folder: each client process
that imports this module says from where, so the test sees what Ray shipped."""
import dataclasses, json, os
from pathlib import Path

from torch import nn

from fedsim import Option
from fedsim.ground.option import Bounds
from fedsim.algorithms.fedavg import FedAvg

if os.environ.get("WHERE_IMPORTED"):
    import ray

    node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    where = {"file": __file__, "node": node}
    (Path(os.environ["WHERE_IMPORTED"]) / f"{os.getpid()}.json").write_text(json.dumps(where))


def tiny(num_classes=10, image_shape=(3, 32, 32)):
    c, h, w = image_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, num_classes))


class ScaledLr(FedAvg):
    lr_scale = Option(1.0, "scales the clients' learning rate", bounds=Bounds(0, 1, low_open=True))

    def settings(self):
        settings = super().settings()
        return dataclasses.replace(settings, lr=settings.lr * self.lr_scale)
'''


@dataclass(frozen=True)
class TwoNodes:
    address: str
    actor_log: Path
    imported: Path  # where each client process says it imported the user's module from


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory: pytest.TempPathFactory):
    """A head and a worker node, each started with Ray's CLI and given one CPU (and a
    small object store), on this machine; stopped, all of it, after."""
    folder = tmp_path_factory.mktemp("two-nodes")
    actor_log, imported = folder / "actors", folder / "imported"
    actor_log.mkdir()
    imported.mkdir()
    temp_dir = tempfile.mkdtemp(prefix="r", dir="/tmp")
    port = free_port()
    # Not LOOPBACK_ONLY: Ray refuses a second node under that flag (it is the one-node
    # mode of macOS and Windows), so these nodes may listen on the machine's address too
    env = _node_env() | {"FEDSIM_ACTOR_LOG": str(actor_log), "WHERE_IMPORTED": str(imported)}
    small_store = ["--object-store-memory", str(100 * 2**20)]
    services = Services()
    try:
        head = services.start(
            _ray_start_args(port, temp_dir, cpus=1, gpus=0) + small_store, folder / "head.log", env
        )
        wait_for(head, folder / "head.log", "Ray runtime started", timeout=120)
        ray = str(Path(sys.executable).parent / "ray")
        worker_args = [ray, "start", "--block", "--address", f"127.0.0.1:{port}"]
        worker_args += ["--num-cpus", "1", "--num-gpus", "0", *small_store, *_node_args()]
        worker = services.start(worker_args, folder / "worker.log", env)
        wait_for(worker, folder / "worker.log", "Ray runtime started", timeout=120)
        yield TwoNodes(f"127.0.0.1:{port}", actor_log, imported)
        assert head.poll() is None and worker.poll() is None, "a node died during the test"
    finally:
        survivors = services.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert not survivors, f"processes left running: {survivors}"


def test_users_code_runs_on_both_nodes_with_a_local_runs_numbers(
    two_nodes: TwoNodes, tiny_cifar: Path, tmp_path: Path
) -> None:
    """Clients run on both nodes; the user's module, which only the driver's folder
    holds, reaches the worker node's client processes (Ray's py_modules, from fedsim);
    the data reaches them through the object store; and the numbers are a local run's."""
    user = tmp_path / "user"
    user.mkdir()
    (user / "shipped_code.py").write_text(USER_CODE)
    options = "--clients 4 --rounds 2 --cpus-per-client 1 --fraction-evaluate 0.5"
    options += " --model shipped_code:tiny --strategy shipped_code:ScaledLr --lr-scale 0.5"
    env = {**os.environ, "PYTHONPATH": str(user)}
    address = f" --ray-address {two_nodes.address}"
    done, _ = simulate(tiny_cifar, tmp_path, "two-nodes", options + address, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    config = json.loads((tmp_path / "two-nodes" / "config.json").read_text())
    assert config["status"] == "complete" and config["cluster"]["started_here"] is False

    calls = [c for c in _actor_calls(two_nodes.actor_log) if c["kind"] == "train"]
    nodes = {c["node_id"] for c in calls}
    assert len(nodes) == 2, "every client ran on one node"
    imports = [json.loads(f.read_text()) for f in two_nodes.imported.glob("*.json")]
    assert {where["node"] for where in imports} >= nodes  # every node's client processes
    for where in imports:  # each imported Ray's shipped copy, not the driver's file
        assert "py_modules_files" in where["file"] and Path(where["file"]).name == "shipped_code.py"

    local, _ = simulate(tiny_cifar, tmp_path, "local", options, env=env)
    assert local.returncode == 0, local.stderr[-3000:]
    for name in WALL_CLOCK:
        assert computed(tmp_path / "two-nodes", name).equals(computed(tmp_path / "local", name))
