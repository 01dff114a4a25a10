"""The main job end to end through the real engine: Flower's simulation on Ray."""

from __future__ import annotations

import json

import torch

from fedsim.results import CSV_COLUMNS
from tests.conftest import simulate


def test_two_clients_on_generated_data(tiny_cifar, tmp_path) -> None:
    done, frame = simulate(
        tiny_cifar, tmp_path, "two", "--clients 2 --rounds 2 --batch-size 16 --lr 0.05"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 clients run at a time" in done.stdout
    assert tuple(frame.columns) == CSV_COLUMNS
    assert frame["round"].tolist() == [0, 1, 2]
    assert frame["clients_sampled"].tolist() == [0, 2, 2]
    assert (frame["clients_failed"] == 0).all()
    assert frame.loc[1:, ["train_loss", "eval_loss", "eval_accuracy"]].notna().all().all()
    assert frame["central_accuracy"].iloc[-1] > 0.3  # the synthetic classes are learnable
    config = json.loads((tmp_path / "two" / "config.json").read_text())
    assert config["status"] == "complete"
    assert config["config"]["clients"] == 2 and config["versions"]["flwr"] == "1.42.0"
    assert config["timings_seconds"]["ray_start"] > 0
    state = torch.load(tmp_path / "two" / "model.pt")
    assert set(state) >= {"conv1.weight", "fc3.bias"}


def test_one_client_does_not_hang(tiny_cifar, tmp_path) -> None:
    done, frame = simulate(tiny_cifar, tmp_path, "solo", "--clients 1 --rounds 1", timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert frame["clients_sampled"].tolist() == [0, 1]


def test_seed_job_on_real_cifar10(shared_cifar, tmp_path) -> None:
    """The issue's acceptance run: 2 clients, 3 rounds, real data, ≥ 50 % accuracy."""
    done, frame = simulate(shared_cifar, tmp_path, "seed-job", "--clients 2 --rounds 3")
    assert done.returncode == 0, done.stderr[-3000:]
    assert frame["round"].tolist() == [0, 1, 2, 3]
    assert frame["central_accuracy"].iloc[-1] >= 0.50
