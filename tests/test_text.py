"""Text as a task: a play's speeches split by speaker (LEAF's Shakespeare, in small),
each position an example (80 characters -> the next), through the engine."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from fedsim.learning.data import load_dataset
from fedsim.learning.data.text import MIN_EXAMPLES, STRING_LENGTH, TEST_STRIDE
from fedsim.learning.tasks import NextCharacter
from tests.conftest import run_cli


def _speech(rng: np.random.Generator, characters: int) -> str:
    words = rng.choice(["to", "be", "or", "not", "that", "is", "the", "question:"], 400)
    return " ".join(words)[:characters]


def _play(folder: Path) -> Path:
    """Two speakers with enough to say (one in two speeches), one with too little."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    text = (
        f"ANN:\n{_speech(rng, 400)}\n\nBOB:\n{_speech(rng, 600)}\n\n"
        f"CAT:\nFie.\n\nANN:\n{_speech(rng, 300)}\n"
    )
    (folder / "input.txt").write_text(text)
    return folder


def test_a_play_is_split_by_speaker_into_strings_and_their_next_character(tmp_path) -> None:
    dataset = load_dataset(str(_play(tmp_path / "play")))
    assert dataset.task == NextCharacter(length=STRING_LENGTH, classes=len(dataset.classes))
    assert dataset.groups == ("ANN", "BOB")  # CAT says too little
    assert dataset.notes["speakers_left_out"] == 1
    vocabulary = np.array(dataset.classes)
    text = (tmp_path / "play" / "input.txt").read_text().split("\n\n")
    ann = text[0].split("\n", 1)[1] + "\n" + text[3].split("\n", 1)[1].rstrip("\n")
    train_x, train_y = np.asarray(dataset.train_x), np.asarray(dataset.train_y)
    train_groups = np.asarray(dataset.train_groups)
    positions = len(ann) - STRING_LENGTH
    assert positions >= MIN_EXAMPLES
    held_out = round(positions * 0.1)
    assert int((train_groups == 0).sum()) == positions - held_out
    first = "".join(vocabulary[train_x[0]])
    assert first == ann[:STRING_LENGTH] and vocabulary[train_y[0]] == ann[STRING_LENGTH]
    test_groups = np.asarray(dataset.test_groups)
    assert int((test_groups == 0).sum()) == len(range(0, held_out, TEST_STRIDE))
    cut = positions - held_out
    test_first = "".join(vocabulary[np.asarray(dataset.test_x)[0]])
    assert test_first == ann[cut : cut + STRING_LENGTH]


def test_fedavg_over_the_speakers_runs_through_the_engine(tmp_path) -> None:
    play = _play(tmp_path / "play")
    done = run_cli(
        *[
            "--model",
            "lstm",
            "--partition",
            "natural",
            "--rounds",
            "1",
            "--local-steps",
            "2",
            "--batch-size",
            "4",
        ],
        *["--val-fraction", "0", "--fraction-evaluate", "0", "--momentum", "0", "--lr", "0.5"],
        *("--data", str(play), "--results-dir", str(tmp_path), "--name", "speakers"),
    )
    assert done.returncode == 0, done.stderr
    document = json.loads((tmp_path / "speakers" / "config.json").read_text())
    assert document["data_shape"]["task"] == "next-character"
    assert document["groups"] == ["ANN", "BOB"] and document["data_notes"]["speakers"] == 2
    groups = pd.read_csv(tmp_path / "speakers" / "groups.csv")
    assert groups["group"].tolist() == ["ANN", "BOB"] * 2
    clients = pd.read_csv(tmp_path / "speakers" / "clients.csv")
    assert len(clients[clients["phase"] == "train"]) == 2


def test_a_text_without_speeches_is_one_line(tmp_path) -> None:
    folder = tmp_path / "prose"
    folder.mkdir()
    (folder / "input.txt").write_text("It was a dark and stormy night.\nThe end.\n")
    done = run_cli("--data", str(folder), "--model", "lstm", "--results-dir", str(tmp_path / "r"))
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("error: --data: ") and "has no speeches" in done.stderr
    assert not (tmp_path / "r").exists()
