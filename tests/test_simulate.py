"""The main job end to end through the real engine: Flower's simulation on Ray."""

from __future__ import annotations

import json

import pandas as pd
import torch

from fedsim.outputs.records import CLIENT_COLUMNS, CSV_COLUMNS
from tests.conftest import simulate


def test_two_clients_on_generated_data(tiny_cifar, tmp_path, all_cpus) -> None:
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
    clients = pd.read_csv(tmp_path / "two" / "clients.csv")
    assert tuple(clients.columns) == CLIENT_COLUMNS
    assert clients[["round", "phase", "client"]].values.tolist() == [
        [r, phase, c] for r in (1, 2) for phase in ("train", "evaluate") for c in (0, 1)
    ]
    assert (clients["status"] == "ok").all() and (clients["seconds"] > 0).all()
    train = clients[clients["phase"] == "train"]
    assert train["accuracy"].isna().all() and (train["examples"] == 450).all()
    # what a deployment would send: the model down (~250 kB), the model and metrics up
    assert train["bytes_down"].between(240_000, 260_000).all()
    assert train["bytes_up"].between(240_000, 260_000).all()
    evaluate = clients[clients["phase"] == "evaluate"]
    assert (evaluate["bytes_up"] < 1000).all() and (evaluate["examples"] == 50).all()
    per_round = clients.groupby("round")[["bytes_down", "bytes_up"]].sum()
    assert frame.set_index("round").loc[1:, ["bytes_down", "bytes_up"]].equals(per_round)


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


def test_fairness_columns_describe_the_whole_population(tiny_cifar, tmp_path) -> None:
    """One label per client: the global model serves some clients and fails others, so
    the 10th percentile of client accuracy sits far below the mean. Every second round
    and after the last, every client is evaluated, not just the sampled ones."""
    options = "--clients 10 --rounds 3 --partition pathological --classes-per-client 1"
    options += " --fraction-evaluate 0.3 --evaluate-all-every 2 --lr 0.05 --batch-size 16"
    done, frame = simulate(tiny_cifar, tmp_path, "fair", options)
    assert done.returncode == 0, done.stderr[-3000:]
    clients = pd.read_csv(tmp_path / "fair" / "clients.csv")
    evaluated = clients[clients["phase"] == "evaluate"].groupby("round")["client"].nunique()
    assert evaluated.to_dict() == {1: 3, 2: 10, 3: 10}
    last = frame.iloc[-1]
    assert last["eval_accuracy_p10"] < 0.5 * last["eval_accuracy"]
    assert last["eval_accuracy_std"] > 0.1
