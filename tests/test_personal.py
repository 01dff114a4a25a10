"""Personal models through the real engine (fedsim.algorithms.personal): each client's
personalised model judged on its own held-out examples beside the global model, the
columns only personal runs have, and a client's own weights across --resume.

One experiment process (one Ray start) runs every personal algorithm and FedAvg for three
rounds on two clients holding different halves of the labels (one label-sorted shard
each), and FedRep and FedAvg-FT on four clients with one held out; a FedRep run killed
and resumed is compared with the experiment's."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fedsim.algorithms import ALGORITHMS, algorithm_class
from fedsim.algorithms.personal import OWN
from fedsim.ground import streams
from fedsim.ground.messages import from_bytes
from fedsim.learning import models, training
from fedsim.learning.tasks import TableClassification
from fedsim.outputs.records import CLIENT_COLUMNS, CSV_COLUMNS, client_columns, round_columns
from tests.conftest import client_state_rows, run_cli, simulate, wait_for_rounds

PERSONAL = [name for name, path in ALGORITHMS.items() if algorithm_class(name).personal]
EXPERIMENT = f"""
num-server-rounds = 3
clients = 2
partition = "shard"
shards-per-client = 1
val-fraction = 0.2
lr = 0.05
momentum = 0.5          # FedRep's (0.9 makes its head-then-body rounds diverge here)
batch-size = 16
head-epochs = 2         # FedRep's
finetune-epochs = 2     # FedAvg-FT's
perfedavg-beta = 0.01   # Per-FedAvg's step at the adapted point (--lr diverges here)
pfedme-lr = 0.05        # pFedMe's steps toward θ (its 0.01 learns slowly in 3 rounds)
pfedme-beta = 2.0       # pFedMe's server step past the average (the paper's 2)
seeds = [0]

[[variant]]             # every personal algorithm, and FedAvg
strategy = {[name for name in PERSONAL if name != "fedbn"] + ["fedavg"]}

[[variant]]             # FedBN's model has BatchNorm
strategy = "fedbn"
model = "cnn-bn"

[[variant]]             # one of four clients held out of training
strategy = ["fedrep", "fedavg-ft"]
clients = 4
holdout-clients = 0.25
"""


@pytest.fixture(scope="module")
def runs(tiny_cifar, tmp_path_factory) -> Path:
    results = tmp_path_factory.mktemp("personal-runs")
    (results / "personal.toml").write_text(EXPERIMENT)
    options = f"--experiment {results / 'personal.toml'}"
    done, _ = simulate(tiny_cifar, results, "personal", options)
    assert done.returncode == 0, done.stderr[-3000:]
    return results / "personal"


def _run(runs: Path, strategy: str, clients: int = 2) -> Path:
    """The experiment's run of `strategy` on `clients` clients, by its name."""
    (found,) = runs.glob(f"clients-{clients}_{strategy}_*seed-0*")
    return found


def test_the_personal_algorithms_are_the_issues() -> None:
    assert sorted(PERSONAL) == sorted(
        [
            "local",
            "fedavg-ft",
            "fedper",
            "fedrep",
            "lg-fedavg",
            "ditto",
            "apfl",
            "fedbn",
            "perfedavg",
            "pfedme",
        ]
    )


# Judged after one step (Per-FedAvg) or by a θ tied to w (pFedMe): their personalised
# models fit a client's own data better (loss), by less than a label's worth in three
# rounds; FedBN's keeps BatchNorm, for clients whose features differ (not the labels here)
SMALL_STEPS = {"perfedavg", "pfedme"}


def test_each_client_is_better_served_by_its_own_model(runs) -> None:
    """The two clients hold different labels: each one's personalised model beats the
    global model on its own held-out examples (by 0.1 of accuracy; by its loss, where
    the algorithm personalises in small steps); rounds.csv has the example-weighted
    mean, the 10th percentile and the spread of them."""
    for name in PERSONAL:
        run = _run(runs, name)
        clients, rounds = pd.read_csv(run / "clients.csv"), pd.read_csv(run / "rounds.csv")
        assert tuple(clients.columns) == client_columns(True), name
        assert tuple(rounds.columns) == round_columns(True), name
        judged = clients[(clients["phase"] == "evaluate") & (clients["round"] == 3)]
        assert sorted(judged["client"]) == [0, 1], name
        for _, client in judged.iterrows():
            if name in SMALL_STEPS:
                assert client["personal_loss"] < client["loss"], (name, client.to_dict())
            elif name != "fedbn":
                assert client["personal_accuracy"] > client["accuracy"] + 0.1, (
                    name,
                    client.to_dict(),
                )
        last = rounds.iloc[-1]
        weighted = np.average(judged["personal_accuracy"], weights=judged["examples"])
        assert last["personal_accuracy"] == pytest.approx(weighted, abs=1e-6), name
        assert last["personal_accuracy_p10"] <= last["personal_accuracy"] + 1e-9, name
        assert last["personal_accuracy_std"] == pytest.approx(
            judged["personal_accuracy"].std(ddof=0), abs=1e-6
        )
        document = json.loads((run / "config.json").read_text())
        assert document["csv_columns"] == list(round_columns(True)), name


def test_runs_of_other_algorithms_keep_their_columns(runs) -> None:
    """FedAvg's files are as ever; the summary shows the personalised accuracy of the
    personal runs only (an experiment without one has no such column: test_sweep)."""
    run = _run(runs, "fedavg")
    assert tuple(pd.read_csv(run / "clients.csv").columns) == CLIENT_COLUMNS
    assert tuple(pd.read_csv(run / "rounds.csv").columns) == CSV_COLUMNS
    summary = pd.read_csv(runs / "summary.csv").set_index("run")
    assert pd.isna(summary.loc[run.name, "final_personal_accuracy"])
    for name in PERSONAL:
        personal = _run(runs, name)
        last = pd.read_csv(personal / "rounds.csv").iloc[-1]
        assert summary.loc[personal.name, "final_personal_accuracy"] == pytest.approx(
            last["personal_accuracy"], abs=1e-5
        )


def test_what_a_client_keeps_is_its_own_part(runs) -> None:
    """FedPer and FedRep keep the head, LG-FedAvg the body, Local, Ditto, APFL and pFedMe
    a whole model, FedBN its BatchNorm layers (statistics included, each client's
    own), FedAvg-FT and Per-FedAvg nothing."""
    net = models.build_model("cnn", seed=0)
    head = models.head(net)
    assert head == ["fc3.weight", "fc3.bias"]
    whole = list(net.state_dict())
    kept = {"fedper": head, "fedrep": head, "local": whole, "ditto": whole, "apfl": whole}
    kept["pfedme"] = whole
    kept["lg-fedavg"] = [name for name in net.state_dict() if name not in head]
    kept["fedbn"] = [f"norm{i}.{key}" for i in range(1, 5) for key in NORM_KEYS]
    for name, names in kept.items():
        rows = client_state_rows(_run(runs, name))
        assert [pid for pid, _, _ in rows] == [0, 1], name
        own = from_bytes(rows[0][2])[OWN]
        assert sorted(own.keys()) == sorted(names), name
    for name in ("fedavg-ft", "perfedavg"):
        assert not (_run(runs, name) / "client_states.sqlite").exists(), name
    first, second = (from_bytes(row[2])[OWN] for row in client_state_rows(_run(runs, "fedbn")))
    statistics = "norm1.running_mean"
    assert not np.allclose(first[statistics].numpy(), second[statistics].numpy())


NORM_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


# The experiment's FedRep run, as a command line
FEDREP = (
    "--strategy fedrep --rounds 3 --clients 2 --partition shard --shards-per-client 1 "
    "--val-fraction 0.2 --lr 0.05 --momentum 0.5 --batch-size 16 "
    "--head-epochs 2 --seed 0"
)


def test_a_personal_run_killed_and_resumed_equals_an_uninterrupted_one(
    runs, tiny_cifar, tmp_path, start_run
) -> None:
    """FedRep killed (SIGKILL, the driver and Ray with it) after its first round, then
    resumed by a new process: the clients' heads, the model and the CSVs (personal
    columns included) are the uninterrupted run's, bit for bit."""
    killed = tmp_path / "killed"
    where = ["--data", str(tiny_cifar), "--results-dir", str(tmp_path), "--name", "killed"]
    process, _ = start_run([*FEDREP.split(), *where])
    wait_for_rounds(killed / "rounds.csv", 1, process)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    assert len(pd.read_csv(killed / "rounds.csv")) < 4  # round 0 and fewer than three
    done = run_cli("--resume", str(killed))
    assert done.returncode == 0, done.stderr[-3000:]
    whole = _run(runs, "fedrep")
    assert client_state_rows(killed) == client_state_rows(whole)
    whole_model, resumed_model = (torch.load(run / "model.pt") for run in (whole, killed))
    assert all(torch.equal(whole_model[k], resumed_model[k]) for k in whole_model)
    for csv, timing in (("rounds.csv", "round_seconds"), ("clients.csv", "seconds")):
        frames = [pd.read_csv(run / csv).drop(columns=[timing]) for run in (whole, killed)]
        assert frames[0].equals(frames[1]), csv


def test_heads_of_the_shipped_models_and_training_only_some_weights() -> None:
    assert models.head(models.build_model("lstm", task=_text_task())) == [
        "head.weight",
        "head.bias",
    ]
    mlp = models.build_model("mlp", task=TableClassification(features=13, classes=2))
    assert models.head(mlp) == ["layers.4.weight", "layers.4.bias"]
    net = models.build_model("cnn", seed=0)
    with pytest.raises(RuntimeError), training.only_trained(net, ["fc3.weight"]):
        assert [n for n, p in net.named_parameters() if p.requires_grad] == ["fc3.weight"]
        raise RuntimeError
    assert all(p.requires_grad for p in net.parameters())
    net.fc1.bias.requires_grad_(False)  # the model's own choice outlasts a phase
    with training.only_trained(net, ["fc3.weight"]):
        pass
    assert [n for n, p in net.named_parameters() if not p.requires_grad] == ["fc1.bias"]


def _text_task():
    from fedsim.learning.tasks import NextCharacter

    return NextCharacter(length=80, classes=65)


def test_evaluation_builds_no_graph() -> None:
    """Judging a model (a client's, the central one) never records autograd history."""
    from fedsim.learning.tasks import CIFAR10

    net, seen = models.build_model("cnn", seed=0), []
    net.register_forward_hook(lambda module, args, output: seen.append(output.requires_grad))
    images, labels = torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.zeros(2, dtype=torch.long)
    training.evaluate(net, CIFAR10, images, labels)
    assert seen == [False]


def test_held_out_clients_never_train_and_are_judged_as_new_clients(runs) -> None:
    """--holdout-clients 0.25 of four: the client the seed holds out has no training row
    and no memory; at every client evaluation it adapts from the global model (FedRep:
    a head of its own on the global body) and is judged; rounds.csv's unseen columns
    are its numbers."""
    (held,) = streams.held_out(0, 4, 0.25)
    for name in ("fedrep", "fedavg-ft"):
        run = _run(runs, name, clients=4)
        clients, rounds = pd.read_csv(run / "clients.csv"), pd.read_csv(run / "rounds.csv")
        trained = clients[clients["phase"] == "train"]
        assert held not in set(trained["client"]) and len(trained) == 3 * 3, name
        unseen = clients[clients["phase"] == "unseen"]
        assert unseen["client"].tolist() == [held] * 3, name  # rounds 1 to 3
        assert unseen["personal_accuracy"].notna().all(), name
        assert held not in set(clients[clients["phase"] == "evaluate"]["client"]), name
        last = rounds.iloc[-1]
        assert last["unseen_accuracy"] == pytest.approx(unseen["personal_accuracy"].iloc[-1])
        # its labels are no other client's: the global model knows none of them
        final = unseen.iloc[-1]
        assert final["personal_accuracy"] > final["accuracy"] + 0.3, (name, final.to_dict())
    stored = client_state_rows(_run(runs, "fedrep", clients=4))
    assert held not in {pid for pid, _, _ in stored}


# --- each algorithm's own step, against its paper's update written out ---------------


def _linear_problem():
    """A 4-feature, 3-class linear model, a batch of 8 rows and the task's loss."""
    task = TableClassification(features=4, classes=3)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    inputs, labels = torch.randn(8, 4), torch.randint(0, 3, (8,))
    return task, model, inputs, labels


def _gradient(task, model, weights, inputs, labels):
    from torch.func import functional_call

    leaves = {name: weight.detach().requires_grad_(True) for name, weight in weights.items()}
    loss = task.loss(functional_call(model, leaves, (inputs,)), labels)
    return dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values())), strict=True))


def _weights(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def test_apfls_step_is_the_papers() -> None:
    """w ← w - lr·∇f(w); v ← v - lr·α·∇f(α·v + (1-α)·w), both at the old weights."""
    from fedsim.algorithms.apfl import _BothSteps

    task, model, inputs, labels = _linear_problem()
    alpha, lr = 0.75, 0.1
    w = _weights(model)
    v = {name: weight + 0.5 for name, weight in w.items()}
    settings = training.TrainSettings(epochs=1, batch_size=8, lr=lr, momentum=0.0)
    step = _BothSteps(task, model, v, alpha, settings)
    step(model, inputs, labels)
    mixture = {name: alpha * v[name] + (1 - alpha) * w[name] for name in w}
    grad_w, grad_mix = (_gradient(task, model, at, inputs, labels) for at in (w, mixture))
    for name, weight in model.named_parameters():
        assert torch.allclose(weight, w[name] - lr * grad_w[name], atol=1e-6), name
        expected = v[name] - lr * alpha * grad_mix[name]
        assert torch.allclose(step.personal[name], expected, atol=1e-6), name


def test_perfedavgs_step_is_first_order_maml() -> None:
    """θ' = θ - α·∇f(θ; first half); θ ← θ - β·∇f(θ'; second half)."""
    from fedsim.algorithms.perfedavg import _MetaStep

    task, model, inputs, labels = _linear_problem()
    alpha, beta = 0.1, 0.05
    theta = _weights(model)
    settings = training.TrainSettings(epochs=1, batch_size=8, lr=alpha, momentum=0.0)
    _MetaStep(task, model, alpha, beta, settings)(model, inputs, labels)
    inner = _gradient(task, model, theta, inputs[:4], labels[:4])
    adapted = {name: theta[name] - alpha * inner[name] for name in theta}
    outer = _gradient(task, model, adapted, inputs[4:], labels[4:])
    for name, weight in model.named_parameters():
        assert torch.allclose(weight, theta[name] - beta * outer[name], atol=1e-6), name


def test_pfedmes_step_is_the_papers() -> None:
    """K steps θ ← θ - η·(∇f(θ) + λ·(θ - w)) from θ = w, then w ← w - lr·λ·(w - θ)."""
    from fedsim.algorithms.pfedme import PFedMe, _MoreauStep
    from fedsim.runner.options import make_config

    task, model, inputs, labels = _linear_problem()
    cfg = make_config(strategy="pfedme", lr=0.05, pfedme_lambda=2.0, pfedme_steps=3)
    algorithm = PFedMe(cfg)
    w = _weights(model)
    step = _MoreauStep(task, model, algorithm)
    step(model, inputs, labels)
    theta = dict(w)
    for _ in range(3):
        grad = _gradient(task, model, theta, inputs, labels)
        theta = {n: theta[n] - 0.01 * (grad[n] + 2.0 * (theta[n] - w[n])) for n in theta}
    for name, weight in model.named_parameters():
        assert torch.allclose(step.personal[name], theta[name], atol=1e-6), name
        expected = w[name] - 0.05 * 2.0 * (w[name] - theta[name])
        assert torch.allclose(weight, expected, atol=1e-6), name


def test_pfedmes_server_moves_beta_of_the_way_to_the_average() -> None:
    """(1-β)·sent + β·(the example-weighted average of the replies)."""
    from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

    from fedsim.algorithms.pfedme import Blended

    def reply(value: float, examples: int) -> RecordDict:
        arrays = ArrayRecord({"w": Array(np.full(3, value, dtype=np.float32))})
        return RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": examples})})

    sent = ArrayRecord({"w": Array(np.zeros(3, dtype=np.float32))})
    blended = Blended(2.0).update(sent, [reply(1.0, 1), reply(4.0, 2)])
    assert blended["w"].numpy().tolist() == [6.0, 6.0, 6.0]  # 2 · (1·1 + 2·4) / 3
