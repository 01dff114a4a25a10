"""GPU sharing: how shares are counted (everywhere) and clients on a real GPU (marked
`gpu`: skipped on machines without CUDA, such as CI's; bench/gpu_share.py measures it)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from fedsim.flower import sizing
from fedsim.ground.config import RunConfig
from tests.conftest import simulate

H200_MIB = 143_771  # what nvidia-smi reports for an H200


def test_shares_are_counted_as_ray_counts_them() -> None:
    # ten 0.1-GPU actors fit on one GPU, although 1.0 // 0.1 == 9.0 in floating point
    assert sizing.fits(1.0, 0.1) == 10 and 1.0 // 0.1 == 9.0
    cluster = sizing.Cluster(16, 1, True, {"num_cpus": 1.0, "num_gpus": 0.1})
    assert cluster.concurrent_clients == 10


def test_auto_share_gives_every_cpu_a_client_on_the_gpu() -> None:
    many = RunConfig(clients=1000)
    assert sizing.gpu_share(many, 16, 1, H200_MIB) == 1 / 16  # the H200 machine
    assert sizing.gpu_share(many, 32, 2, None) == 1 / 16  # 16 CPUs per GPU
    assert sizing.gpu_share(RunConfig(clients=2), 16, 1, H200_MIB) == 0.5  # 2 clients
    assert sizing.gpu_share(many, 16, 0, None) == 0.0  # no GPU
    assert sizing.gpu_share(RunConfig(gpus_per_client=0.3), 16, 1, H200_MIB) == 0.3
    # an 8 GB card holds 7 actors of ACTOR_GPU_MIB: the share is rounded down to Ray's
    # unit so that exactly 7 fit
    small = sizing.gpu_share(many, 16, 1, 8_000)
    assert small == pytest.approx(0.1428)
    assert sizing.fits(1.0, small) == 7


@pytest.mark.gpu
def test_clients_share_a_real_gpu(tiny_cifar: Path, tmp_path: Path) -> None:
    actors = tmp_path / "actors"
    actors.mkdir()
    env = {**os.environ, "FEDSIM_ACTOR_LOG": str(actors)}
    options = "--clients 4 --rounds 2 --gpus-per-client 0.25"
    done, frame = simulate(tiny_cifar, tmp_path, "share", options, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert frame["central_accuracy"].iloc[-1] > 0.3
    calls = [json.loads(line) for log in actors.glob("*.jsonl") for line in log.open()]
    train = [call for call in calls if call["kind"] == "train"]
    assert train and all(call["cuda"] and call["cuda_reserved"] > 0 for call in train)
    assert {call["resources"]["GPU"] for call in train} == {0.25}
    assert len({call["pid"] for call in train}) <= 4

    done, _ = simulate(tiny_cifar, tmp_path, "auto", "--clients 4 --rounds 1")
    assert done.returncode == 0, done.stderr[-3000:]
    cluster = json.loads((tmp_path / "auto" / "config.json").read_text())["cluster"]
    assert cluster["client_resources"]["num_gpus"] == 0.25  # 4 clients: a quarter each
