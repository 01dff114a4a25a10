"""Tables as a task: FLamby's Fed-Heart-Disease prepared as FLamby prepares it, any
table of train and test CSV files, their runs through the engine (per-centre
evaluation, the local baseline), local steps, Adam, and bad tables refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fedsim.ground.errors import ConfigError
from fedsim.learning import models, training
from fedsim.learning.data import load_dataset
from fedsim.learning.tasks import TableClassification
from fedsim.simulation.clock import local_work
from tests.conftest import run_cli

HEART = "--model logreg --batch-size 4 --momentum 0 --val-fraction 0 --fraction-evaluate 0"


def test_heart_disease_is_prepared_as_flamby_prepares_it(shared_heart) -> None:
    """FLamby's README: 740 patients, per-centre train/test 199/104, 172/89, 30/16,
    85/45, 13 features after one-hot encoding; each centre's training rows standardised
    by their own mean and (unbiased) standard deviation."""
    dataset = load_dataset(str(shared_heart))
    assert dataset.task == TableClassification(features=13, classes=2)
    assert dataset.groups == ("cleveland", "hungarian", "switzerland", "va")
    train_groups, test_groups = np.asarray(dataset.train_groups), np.asarray(dataset.test_groups)
    assert [int((train_groups == g).sum()) for g in range(4)] == [199, 172, 30, 85]
    assert [int((test_groups == g).sum()) for g in range(4)] == [104, 89, 16, 45]
    train = torch.from_numpy(np.array(dataset.train_x))
    for group in range(4):
        rows = train[torch.from_numpy(train_groups == group)]
        assert rows.mean(0).abs().max() < 1e-5
        varying = rows.std(0) > 0  # a column constant within a centre stays 0
        assert torch.allclose(rows.std(0)[varying], torch.ones(int(varying.sum())), atol=1e-4)
    # stratified: each centre's share of disease about equal in its train and test rows
    train_y, test_y = np.asarray(dataset.train_y), np.asarray(dataset.test_y)
    for group in (0, 1, 3):
        shares = train_y[train_groups == group].mean(), test_y[test_groups == group].mean()
        assert abs(shares[0] - shares[1]) < 0.02


def test_the_binary_loss_is_flambys_sigmoid_and_bce() -> None:
    """One logit with binary cross-entropy is FLamby's Linear + sigmoid + BCELoss."""
    task = TableClassification(features=13, classes=2)
    scores = torch.linspace(-3, 3, 11)[:, None]
    labels = torch.tensor([0, 1] * 5 + [1])
    expected = torch.nn.BCELoss()(torch.sigmoid(scores), labels[:, None].float())
    assert torch.allclose(task.loss(scores, labels), expected, atol=1e-6)
    assert task.right(scores, labels).tolist() == ((scores[:, 0] > 0).long() == labels).tolist()


def test_adam_trains_as_torch_optim_adam() -> None:
    data = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 13, generator=data), torch.randint(0, 2, (64,), generator=data)
    task = TableClassification(13, 2)
    settings = training.TrainSettings(
        epochs=1, batch_size=8, lr=0.01, momentum=0.0, steps=20, adam=True
    )
    ours, theirs = (models.build_model("mlp", seed=1, task=task) for _ in range(2))
    result = training.train(ours, task, x, y, settings, torch.Generator().manual_seed(2))
    optimizer = torch.optim.Adam(theirs.parameters(), lr=0.01)
    order = torch.Generator().manual_seed(2)
    for batch, labels in training.batches(x, y, settings, order):
        optimizer.zero_grad()
        task.loss(theirs(batch), labels).backward()
        optimizer.step()
    assert result.steps == 20  # 20 batches of 8 from 64 rows: two epochs and a half
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_a_model_that_does_not_fit_the_table_is_refused(tmp_path, monkeypatch) -> None:
    """A model for images, or one with a score per class where two classes take one
    logit, is refused before anything runs."""
    (tmp_path / "table_models.py").write_text(
        "import torch\n\ndef two_scores(num_features):\n"
        "    return torch.nn.Linear(num_features, 2)\n"
    )
    monkeypatch.chdir(tmp_path)
    task = TableClassification(features=13, classes=2)
    with pytest.raises(ConfigError, match=r"cnn fails on the data's rows \(13 features\)"):
        models.check_model("cnn", task)
    with pytest.raises(ConfigError, match=r"gives \(2, 2\) for 2 rows, expected \(2, 1\)"):
        models.check_model("table_models:two_scores", task)
    assert models.check_model("mlp", TableClassification(features=13, classes=3))


def test_fedavg_on_the_four_centres_reports_each_centre(shared_heart, tmp_path) -> None:
    """One client per centre, each centre's test rows judged each round (groups.csv),
    config.json saying what the task is; then FLamby's "Local 2": Switzerland alone."""
    done = run_cli(
        *f"{HEART} --partition natural --rounds 2 --local-steps 10 --lr 0.01".split(),
        *("--data", str(shared_heart), "--results-dir", str(tmp_path), "--name", "fedavg"),
    )
    assert done.returncode == 0, done.stderr
    run = tmp_path / "fedavg"
    document = json.loads((run / "config.json").read_text())
    assert document["data_shape"] == {"task": "table-classification", "features": 13, "classes": 2}
    assert document["partition_sizes"] == [199, 172, 30, 85]
    groups = pd.read_csv(run / "groups.csv")
    assert list(groups.columns) == ["round", "group", "examples", "loss", "accuracy"]
    assert groups["round"].tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert groups[groups["round"] == 2]["examples"].tolist() == [104, 89, 16, 45]
    clients = pd.read_csv(run / "clients.csv")
    assert set(clients[clients["phase"] == "train"]["examples"]) == {199, 172, 30, 85}
    last = groups[groups["round"] == 2]
    rounds = pd.read_csv(run / "rounds.csv")
    pooled = (last["accuracy"] * last["examples"]).sum() / last["examples"].sum()
    assert rounds["central_accuracy"].iloc[-1] == pytest.approx(pooled, abs=1e-6)

    import fedsim  # the local baseline from Python: fedsim.run, the same options

    local = fedsim.run(
        data=str(shared_heart),
        partition="natural",
        only_group="switzerland",
        model="logreg",
        rounds=1,
        local_epochs=2,
        batch_size=4,
        client_optimizer="adam",
        lr=0.001,
        val_fraction=0,
        fraction_evaluate=0,
        results_dir=str(tmp_path),
        name="local",
    )
    assert local.status == "complete"
    assert local.document["partition_sizes"] == [30] and local.config["clients"] == 1
    assert len(pd.read_csv(local.run_dir / "groups.csv")) == 8  # 4 centres, rounds 0-1
    assert local.model(torch.zeros(3, 13)).shape == (3, 1)


def _table(folder: Path, train: pd.DataFrame, test: pd.DataFrame) -> Path:
    folder.mkdir(parents=True)
    train.to_csv(folder / "train.csv", index=False)
    test.to_csv(folder / "test.csv", index=False)
    return folder


def _rows(count: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(count, 3))
    return pd.DataFrame(
        {
            "a": x[:, 0],
            "b": x[:, 1],
            "c": x[:, 2],
            "site": rng.choice(["north", "south", "east"], count),
            "label": (x[:, 0] + x[:, 1] > 0).astype(int),
        }
    )


def test_any_table_runs_split_by_its_column_and_bad_tables_are_one_line(tmp_path) -> None:
    data = _table(tmp_path / "sites", _rows(120, 0), _rows(60, 1))
    dataset = load_dataset(str(data), group_column="site")
    assert dataset.task == TableClassification(features=3, classes=2)
    assert dataset.groups == ("east", "north", "south")
    assert np.array(dataset.train_x).dtype == np.float32

    no_label = _table(tmp_path / "no_label", *(f.drop(columns="label") for f in (_rows(9, 0),) * 2))
    text = _rows(9, 0).assign(b="x")
    not_numbers = _table(tmp_path / "text", text, text)
    for folder, message in (
        (no_label, "has no label column"),
        (not_numbers, "column 'b' is not numeric"),
        (data, "has no column 'ward'"),
    ):
        done = run_cli(
            *("--data", str(folder), "--model", "logreg", "--partition", "natural"),
            *("--partition-column", "ward" if folder == data else "site"),
            *("--results-dir", str(tmp_path / "results")),
        )
        assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
        assert done.stderr.startswith("error: --data: ") and message in done.stderr
        assert not (tmp_path / "results").exists()


def test_local_steps_are_batches_and_the_clock_charges_their_examples() -> None:
    """--local-steps N draws N batches (epochs of fresh permutations, the last cut
    short); the simulated clock charges the examples those batches hold."""
    from fedsim.runner.options import make_config

    cfg = make_config(local_steps=100, batch_size=4)
    settings = training.train_settings(cfg)
    for examples in (3, 30, 199):
        rows = torch.arange(examples)
        drawn = list(training.batches(rows, rows, settings, torch.Generator().manual_seed(0)))
        assert len(drawn) == training.steps_of(examples, settings) == 100
        assert sum(len(labels) for _, labels in drawn) == local_work(cfg, examples)
    assert local_work(make_config(local_epochs=3), 10) == 30
    with pytest.raises(ConfigError, match=r"^--local-steps: counts local work in batches"):
        make_config(local_steps=5, local_epochs=2)


def test_clients_trained_together_match_one_at_a_time_on_a_table() -> None:
    """The vectorised trainer takes the task's loss (one logit, binary cross-entropy)
    and the same steps as one client after another (clients of unequal sizes)."""
    from fedsim.learning import together

    task = TableClassification(features=13, classes=2)
    model = models.build_model("mlp", seed=0, task=task)
    start = {name: value.clone() for name, value in model.state_dict().items()}
    data = torch.Generator().manual_seed(3)
    clients = [
        (torch.randn(n, 13, generator=data), torch.randint(0, 2, (n,), generator=data))
        for n in (30, 17)
    ]
    settings = training.TrainSettings(epochs=1, batch_size=4, lr=0.05, momentum=0.9, steps=12)
    generators = [torch.Generator().manual_seed(k) for k in range(2)]
    hooks = [training.LocalHooks()] * 2
    trained, results = together.train_together(
        model, task, [start, start], clients, settings, generators, hooks
    )
    for (x, y), weights, result, seed in zip(clients, trained, results, range(2), strict=True):
        model.load_state_dict(start)
        alone = training.train(model, task, x, y, settings, torch.Generator().manual_seed(seed))
        assert result.steps == alone.steps == 12
        for name, value in model.state_dict().items():
            assert torch.allclose(weights[name], value, atol=1e-5), name
