"""Every algorithm through the real engine, and what only a whole run shows: SCAFFOLD's
client memory across --resume, DP's epsilon column, an attack and a defence.

One experiment process runs every algorithm for two rounds; the other tests reuse its
runs as their uninterrupted or unattacked baselines, so the module starts six
processes in all. Everything runs on the tiny synthetic CIFAR fixture with one actor.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fedsim.algorithms import ALGORITHMS, algorithm_class
from fedsim.learning import models, nets
from tests.conftest import run_cli, simulate

OPTIONS = "--clients 10 --rounds 2 --lr 0.05 --batch-size 8 --local-epochs 2"
# the options of the algorithms that take some (each ignored by the others)
OPTIONS += " --server-lr 0.01 --num-to-keep 3 --q 0.5"
ATTACK = "--byzantine-fraction 0.3 --attack sign-flip --num-malicious 3"


# run through the engine by other modules, left out here to keep the suite short
ELSEWHERE = {
    "fedprox": "test_strategies, test_equivalence",
    "fedavgm": "test_strategies",
    "fedadam": "test_strategies",
    "fedbuff": "test_clock_engine",
    **{name: "test_personal" for name in ALGORITHMS if algorithm_class(name).personal},
}
TRAINED_HERE = [name for name in ALGORITHMS if name not in ELSEWHERE]


def _simulate(data: Path, results: Path, name: str, options: str, timeout: float = 600):
    done, _ = simulate(data, results, name, f"{OPTIONS} {options}", timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("algorithm-runs")


@pytest.fixture(scope="module")
def every(tiny_cifar, results) -> Path:
    """Every algorithm not run through the engine elsewhere, two rounds each, in one
    experiment (one Ray instance; a run each: minutes on a busy machine)."""
    strategies = ",".join(TRAINED_HERE)
    _simulate(tiny_cifar, results, "every", f"--strategy {strategies}", timeout=3600)
    return results / "every"


def _rounds(run: Path) -> pd.DataFrame:
    return pd.read_csv(run / "rounds.csv")


def _distance(model: dict[str, torch.Tensor]) -> float:
    initial = models.build_model("cnn", seed=0).state_dict()
    return float(sum((model[k] - v).pow(2).sum() for k, v in initial.items()).sqrt())


def test_every_algorithm_trains_two_rounds(every) -> None:
    built_in = {name for name, path in ALGORITHMS.items() if path.startswith("fedsim.")}
    assert built_in == {*TRAINED_HERE, *ELSEWHERE}  # (another test's own may be admitted)
    for name in TRAINED_HERE:
        run = every / f"{name}_seed-0"
        rounds = _rounds(run)
        assert rounds["round"].tolist() == [0, 1, 2], name
        assert (rounds["clients_failed"].iloc[1:] == 0).all(), name
        assert np.isfinite(rounds["central_loss"]).all(), name
        assert rounds["dp_epsilon"].isna().all(), name  # --dp off: an empty column
        assert set(pd.read_csv(run / "clients.csv")["status"]) == {"ok"}, name
        model = torch.load(run / "model.pt")
        # QFedAvg's float64 aggregate is cast back (Flower's FedAdam returns float64, its
        # bias correction being a NumPy float64 scalar: left as Flower has it)
        assert all(v.dtype == torch.float32 for v in model.values()), name
        assert _distance(model) > 1e-3, name
    assert not (every / "fedavg_seed-0" / "client_states.sqlite").exists()  # nothing to keep


def test_removed_client_memories_cannot_train_further(tiny_cifar, results) -> None:
    options = "--strategy scaffold --rounds 1 --client-states remove"
    _simulate(tiny_cifar, results, "scaffold-removed", options)
    run = results / "scaffold-removed"
    assert json.loads((run / "config.json").read_text())["status"] == "complete"
    assert sorted(p.name for p in run.iterdir() if "client_states" in p.name) == []
    done = run_cli("--resume", str(run), "--rounds", "2")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: --resume: {run / 'client_states.sqlite'} is gone (--client-states remove "
        "deletes it once a run is complete): the run cannot train further without its "
        "clients' memories"
    ]
    assert len(_rounds(run)) == 2  # untouched


def test_dp_reports_the_privacy_spent_each_round(every, tiny_cifar, results) -> None:
    """Client-side fixed clipping: each reply clipped in the client loop, Flower's noise
    on the aggregate, dp-accounting's epsilon in rounds.csv."""
    from dp_accounting import dp_event, rdp
    from dp_accounting.privacy_accountant import NeighboringRelation

    options = (
        "--strategy fedavg --dp client-fixed --dp-noise-multiplier 0.1 --dp-clipping-norm 0.05"
    )
    _simulate(tiny_cifar, results, "dp", options)
    rounds = _rounds(results / "dp")
    assert pd.isna(rounds.loc[0, "dp_epsilon"])
    for server_round in (1, 2):
        accountant = rdp.RdpAccountant(neighboring_relation=NeighboringRelation.REPLACE_ONE)
        event = dp_event.SampledWithoutReplacementDpEvent(10, 10, dp_event.GaussianDpEvent(0.05))
        accountant.compose(dp_event.SelfComposedDpEvent(event, server_round))
        expected = accountant.get_epsilon(1e-5)
        assert rounds.loc[server_round, "dp_epsilon"] == pytest.approx(expected, rel=1e-6)
    # each round moves the model by at most the clipping norm, plus the noise
    noise = 0.1 * 0.05 / 10 * np.sqrt(sum(v.numel() for v in nets.Net().state_dict().values()))
    assert _distance(torch.load(results / "dp" / "model.pt")) < 2 * (0.05 + 2 * noise)
    assert _distance(torch.load(every / "fedavg_seed-0" / "model.pt")) > 1.0


def test_sign_flipping_hurts_fedavg_and_krum_recovers(every, tiny_cifar, results) -> None:
    done = _simulate(tiny_cifar, results, "attacked", f"--strategy fedavg,krum {ATTACK}")
    assert "3 of 10 clients are malicious (sign-flip)" in done.stdout
    document = json.loads((results / "attacked" / "krum_seed-0" / "config.json").read_text())
    assert len(document["malicious_clients"]) == 3 and document["attack"] == "sign-flip"

    def accuracy(run: Path) -> float:
        return float(_rounds(run)["central_accuracy"].iloc[-1])

    clean = accuracy(every / "fedavg_seed-0")
    attacked = accuracy(results / "attacked" / "fedavg_seed-0")
    defended = accuracy(results / "attacked" / "krum_seed-0")
    assert attacked < clean - 0.2
    assert defended > attacked + 0.2
