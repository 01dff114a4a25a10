"""What --resume takes on trust, checked (issue 40): the user's own code must be what the
run began with, and the clients' memories must be exactly what the checkpoint names.
Through the real engine and the real command line; the refusals happen before Ray."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch

import fedsim
from tests.conftest import ROOT, run_cli

MODEL = """
from torch import nn


def linear(num_classes, image_shape):
    c, h, w = image_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, num_classes))
"""
MODULE = "resume_checks_model"
RUN = f"--strategy scaffold --clients 4 --fraction-fit 0.5 --batch-size 16 --model {MODULE}:linear"
STORE = "client_states.sqlite"


def _cli(code: Path, *args: str) -> subprocess.CompletedProcess:
    """simulate.py with the user's module importable (as from its own folder)."""
    return run_cli(*args, env={**os.environ, "PYTHONPATH": str(code)})


@pytest.fixture(scope="module")
def runs(tiny_cifar, tmp_path_factory) -> dict[str, Path]:
    """A SCAFFOLD run (the clients keep memories) with the user's own model: `one` as it
    was after round 1, `two` the same run resumed to round 2."""
    root = tmp_path_factory.mktemp("resume_checks")
    code = root / "code"
    code.mkdir()
    (code / f"{MODULE}.py").write_text(MODEL)
    where = ["--data", str(tiny_cifar), "--results-dir", str(root), "--name", "two"]
    done = _cli(code, *RUN.split(), "--rounds", "1", *where)
    assert done.returncode == 0, done.stderr[-3000:]
    shutil.copytree(root / "two", root / "one")
    resumed = _cli(code, "--resume", str(root / "two"), "--rounds", "2")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return {"code": code, "one": root / "one", "two": root / "two"}


def _copy(run: Path, tmp_path: Path, name: str = "copy") -> Path:
    return Path(shutil.copytree(run, tmp_path / name))


def test_a_store_merges_its_log_and_a_resume_verifies_it(runs) -> None:
    """The file alone is the store once a run stops, and a store that holds what the
    checkpoint names resumes (round 1's, to round 2)."""
    for run in (runs["one"], runs["two"]):
        assert (run / STORE).exists() and not Path(f"{run / STORE}-wal").exists()
    document = json.loads((runs["two"] / "config.json").read_text())
    assert document["status"] == "complete" and document["resumed_from_round"] == 1
    with contextlib.closing(sqlite3.connect(runs["two"] / STORE)) as db:
        assert db.execute("SELECT COUNT(*) FROM states").fetchone()[0] == 4  # every client


@pytest.mark.parametrize("damage", ["emptied", "truncated", "garbled", "older copy"])
def test_a_store_that_is_not_the_checkpoints_is_refused(
    damage, runs, tmp_path, monkeypatch
) -> None:
    monkeypatch.syspath_prepend(str(runs["code"]))
    run = _copy(runs["two"], tmp_path)
    store = run / STORE
    intact = store.read_bytes()
    if damage == "emptied":
        store.write_bytes(b"")
    elif damage == "truncated":
        store.write_bytes(intact[: len(intact) // 3])
    elif damage == "garbled":
        store.write_bytes(intact[:4096] + bytes(len(intact) - 4096))
    else:
        shutil.copy(runs["one"] / STORE, store)
    before = _files(run)
    with pytest.raises(fedsim.ConfigError) as refused:
        fedsim.resume(run, rounds=3)
    said = str(refused.value)
    assert said.startswith(f"--resume: {store} does not hold the clients' memories of round 2")
    assert "\n" not in said
    assert _files(run) == before  # nothing changed


def _files(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in run.iterdir()}


def test_another_algorithms_checkpoint_is_said_to_be_foreign(runs, tmp_path, monkeypatch):
    """SCAFFOLD's checkpoint in a FedAvg run's folder (which has no store): the
    checkpoint is another run's, not a store that went missing."""
    monkeypatch.syspath_prepend(str(runs["code"]))
    run = _copy(runs["two"], tmp_path)
    (run / STORE).unlink()
    document = json.loads((run / "config.json").read_text())
    document["config"] |= {"strategy": "fedavg", "strategy_options": {}}
    (run / "config.json").write_text(json.dumps(document))
    with pytest.raises(
        fedsim.ConfigError, match=r"holds a ScaffoldStrategy strategy.*another run's"
    ):
        fedsim.resume(run, rounds=3)


def test_changed_user_code_is_refused_unless_accepted_and_then_recorded(runs, tmp_path) -> None:
    code = tmp_path / "code"
    shutil.copytree(runs["code"], code)
    module = code / f"{MODULE}.py"
    module.write_text(MODEL + "\n# edited since the run began\n")
    run = _copy(runs["two"], tmp_path)
    refused = _cli(code, "--resume", str(run), "--rounds", "3")
    assert refused.returncode == 2
    assert refused.stderr.startswith(f"error: --resume: {module} (--model {MODULE}:linear) ")
    assert "changed since the run began" in refused.stderr
    assert refused.stderr.count("\n") == 1

    accepted = _cli(code, "--resume", str(run), "--rounds", "3", "--accept-changed-code")
    assert accepted.returncode == 0, accepted.stderr[-3000:]
    document = json.loads((run / "config.json").read_text())
    (change,) = document["user_code_changes"]
    assert change["option"] == "model" and change["after_round"] == 2
    assert change["file"] == str(module.resolve())
    assert document["user_code"]["model"]["sha256"] == change["now"] != change["was"]


def test_a_checkpoint_of_the_first_format_still_resumes(tiny_cifar, tmp_path) -> None:
    """tests/data/checkpoint_v1/run: FedAvgM with server-side DP, one round, written by
    fedsim before checkpoints held the server's state explicitly (the strategy, its DP
    wrapper and the accountant pickled whole). It resumes to round 2: the momentum and
    the account go on (epsilon is the accountant's after two rounds), and the checkpoint
    it writes holds no pickled object."""
    from fedsim.algorithms.privacy import Accountant

    run = Path(shutil.copytree(ROOT / "tests" / "data" / "checkpoint_v1" / "run", tmp_path / "run"))
    document = json.loads((run / "config.json").read_text())
    document["config"]["data"] = str(tiny_cifar)  # the same generated images, elsewhere
    (run / "config.json").write_text(json.dumps(document))
    resumed = run_cli("--resume", str(run), "--rounds", "2")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rounds = pd.read_csv(run / "rounds.csv")
    assert rounds["round"].tolist() == [0, 1, 2] and rounds.central_loss.notna().all()
    cfg = document["config"]
    account = Accountant(cfg["clients"], cfg["clients"], cfg["dp_delta"])
    for _ in range(2):
        account.spend(cfg["dp_noise_multiplier"] / 2)
    assert rounds.dp_epsilon.iloc[2] == pytest.approx(account.epsilon(), rel=1e-9)
    saved = torch.load(run / "checkpoint.pt", weights_only=True)
    assert saved["format"] == 2 and saved["round"] == 2
    assert saved["strategy_kind"] == "FedAvgM in DifferentialPrivacyServerSideFixedClipping"
