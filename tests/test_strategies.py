"""Flower's strategies through the real engine, and the seeded client sampler."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from fedsim.learning.models import build_model
from fedsim.simulation.sampling import sample_clients
from tests.conftest import run_cli

# --- the sampler ------------------------------------------------------------------------


def test_sampler_depends_on_seed_round_and_stream_alone() -> None:
    picks = sample_clients(seed=7, server_round=3, clients=100, fraction=0.1, stream=0)
    assert picks == sample_clients(7, 3, 100, 0.1, 0)  # reproducible
    assert picks == sorted(set(picks)) and len(picks) == 10 and all(0 <= p < 100 for p in picks)
    assert picks != sample_clients(8, 3, 100, 0.1, 0)  # another seed
    assert picks != sample_clients(7, 4, 100, 0.1, 0)  # another round
    assert picks != sample_clients(7, 3, 100, 0.1, 1)  # evaluation samples on its own
    rounds = [tuple(sample_clients(7, r, 100, 0.1, 0)) for r in range(1, 21)]
    assert len(set(rounds)) == 20  # every round a new draw
    assert sample_clients(7, 3, 5, 1.0, 0) == [0, 1, 2, 3, 4]
    assert sample_clients(7, 3, 5, 0.01, 0) in ([0], [1], [2], [3], [4])  # at least one


def test_sampler_spreads_over_all_clients() -> None:
    counts = pd.Series(
        [p for r in range(1, 401) for p in sample_clients(0, r, 10, 0.3, 0)]
    ).value_counts()
    assert len(counts) == 10 and counts.min() > 80  # 120 each on average


# --- strategies -------------------------------------------------------------------------

SERVER_LR = 0.01


@pytest.fixture(scope="module")
def models(tiny_cifar, tmp_path_factory) -> dict[str, tuple[dict, pd.DataFrame]]:
    """One round, one client, the same seed: only the strategy differs between the runs."""
    results = tmp_path_factory.mktemp("strategies")
    done = run_cli(
        "--strategy",
        "fedavg,fedprox,fedavgm,fedadam",
        "--proximal-mu",
        "1.0",
        "--server-lr",
        str(SERVER_LR),
        "--clients",
        "1",
        "--rounds",
        "1",
        "--lr",
        "0.05",
        "--batch-size",
        "16",
        "--data",
        str(tiny_cifar),
        "--results-dir",
        str(results),
        "--name",
        "strategies",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    folder = results / "strategies"
    return {
        strategy: (
            torch.load(folder / f"{strategy}_seed-0" / "model.pt"),
            pd.read_csv(folder / f"{strategy}_seed-0" / "rounds.csv"),
        )
        for strategy in ("fedavg", "fedprox", "fedavgm", "fedadam")
    }


def _initial() -> dict[str, torch.Tensor]:
    return build_model("cnn", seed=0).state_dict()


def _change(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: state[k] - v for k, v in _initial().items()}


def _distance(state: dict[str, torch.Tensor]) -> float:
    return float(sum(d.pow(2).sum() for d in _change(state).values()).sqrt())


def test_fedprox_pulls_the_client_towards_the_global_model(models) -> None:
    fedavg, fedprox = models["fedavg"][0], models["fedprox"][0]
    assert 0 < _distance(fedprox) < 0.9 * _distance(fedavg)


def test_fedavgm_steps_the_server_learning_rate_along_the_client_update(models) -> None:
    client = _change(models["fedavg"][0])  # one client: FedAvg's model is the client's
    server = _change(models["fedavgm"][0])
    for name, step in server.items():
        torch.testing.assert_close(step, SERVER_LR * client[name], atol=1e-6, rtol=1e-4)


def test_fedadam_takes_a_bounded_adaptive_step_from_the_same_client_update(models) -> None:
    (fedavg, avg_rounds), (fedadam, adam_rounds) = models["fedavg"], models["fedadam"]
    # the clients trained identically; only the server's update differs
    assert adam_rounds.loc[1, "train_loss"] == avg_rounds.loc[1, "train_loss"]
    largest = max(float(d.abs().max()) for d in _change(fedadam).values())
    assert max(float(d.abs().max()) for d in _change(fedavg).values()) > SERVER_LR
    assert 0.5 * SERVER_LR < largest <= SERVER_LR  # Adam's step is at most eta per weight
    assert adam_rounds.loc[1, "central_loss"] != avg_rounds.loc[1, "central_loss"]
