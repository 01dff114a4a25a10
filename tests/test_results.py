"""rounds.csv: exact columns, one row per round, on disk as soon as the round ends."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fedsim.outputs.files import CsvRecorder
from fedsim.outputs.records import CLIENT_COLUMNS, CSV_COLUMNS, ClientRecord, RoundRecord


def _client(pid: int, status: str = "ok", phase: str = "train", accuracy=None) -> ClientRecord:
    return ClientRecord(
        1, phase, pid, 10, 1.5, accuracy, status, 0.5, 100, 40 if status == "ok" else 0
    )


def test_csv_rows_are_flushed_before_the_recorder_closes(tmp_path) -> None:
    path = tmp_path / "rounds.csv"
    recorder = CsvRecorder(path, tmp_path / "clients.csv")
    recorder.on_round_end(RoundRecord(round=0, central_loss=2.3, central_accuracy=0.1), None)
    recorder.on_round_end(
        RoundRecord(
            round=1,
            train_loss=1.9,
            eval_loss=1.6,
            eval_accuracy=0.4,
            central_loss=1.5,
            central_accuracy=0.45,
            round_seconds=3.5,
            clients=[_client(0), _client(1, "failed")],
        ),
        None,
    )
    frame = pd.read_csv(path)  # read while the file is still open for writing
    assert tuple(frame.columns) == CSV_COLUMNS
    assert frame["round"].tolist() == [0, 1]
    assert pd.isna(frame.loc[0, "train_loss"]) and frame.loc[0, "central_accuracy"] == 0.1
    assert frame.loc[1, "clients_failed"] == 1 and frame.loc[1, "eval_accuracy"] == 0.4
    assert frame.loc[1, "clients_sampled"] == 2
    assert (frame.loc[1, "bytes_down"], frame.loc[1, "bytes_up"]) == (200, 40)
    clients = pd.read_csv(tmp_path / "clients.csv")
    assert tuple(clients.columns) == CLIENT_COLUMNS
    assert clients["status"].tolist() == ["ok", "failed"]
    recorder.on_run_end(None)


def test_reopening_appends_without_a_second_header(tmp_path) -> None:
    path = tmp_path / "rounds.csv"
    first = CsvRecorder(path, tmp_path / "clients.csv")
    first.on_round_end(RoundRecord(round=0), None)
    first.on_run_end(None)
    second = CsvRecorder(path, tmp_path / "clients.csv")
    second.on_round_end(RoundRecord(round=1, train_loss=1.0), None)
    second.on_run_end(None)
    assert pd.read_csv(path)["round"].tolist() == [0, 1]


def test_fairness_columns_describe_the_evaluated_clients() -> None:
    accuracies = [0.1, 0.2, 0.9, 0.95, 1.0]
    record = RoundRecord(
        round=1,
        clients=[_client(0)]
        + [_client(i, phase="evaluate", accuracy=a) for i, a in enumerate(accuracies)],
    )
    assert record.eval_accuracy_p10 == pytest.approx(np.percentile(accuracies, 10))
    assert record.eval_accuracy_std == pytest.approx(np.std(accuracies))
    assert RoundRecord(round=1, clients=[_client(0)]).eval_accuracy_p10 is None
