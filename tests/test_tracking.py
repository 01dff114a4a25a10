"""--tensorboard and --mlflow: what the trackers log, read back with the real packages
(TensorBoard's event reader, an MLflow file store through MlflowClient)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedsim.ground.config import RunConfig
from fedsim.ground.errors import ConfigError
from fedsim.outputs.records import PERSONAL_ROUND_COLUMNS, ClientRecord, RoundRecord
from fedsim.outputs.tracking import METRICS, metrics, mlflow_uri, trackers
from fedsim.runner.options import make_config


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No MLflow telemetry and no HTTP retries: nothing here may reach a network."""
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # what the tracker sets


def _client(pid: int, phase: str, accuracy: float | None, status: str = "ok") -> ClientRecord:
    return ClientRecord(1, phase, pid, 10, 1.5, accuracy, status, 0.5, 1000 + pid, 400)


def _rounds() -> list[RoundRecord]:
    """Round 0 holds only the central evaluation; rounds 1 and 2 hold every column."""
    records = [RoundRecord(round=0, central_loss=2.31, central_accuracy=0.1, sim_clock=0.0)]
    for r in (1, 2):
        records.append(
            RoundRecord(
                round=r,
                train_loss=2.0 / r,
                eval_loss=1.8 / r,
                eval_accuracy=0.3 * r,
                central_loss=1.7 / r,
                central_accuracy=0.25 * r,
                round_seconds=1.5 + r,
                sim_round_seconds=10.0 * r,
                sim_clock=5.0 * r * (r + 1),  # the sum of the rounds' 10 and 20
                clients=[
                    _client(0, "train", None),
                    _client(1, "train", None, status="failed"),
                    _client(0, "evaluate", 0.2 * r),
                    _client(1, "evaluate", 0.4 * r),
                ],
            )
        )
    return records


def _run(cfg: RunConfig, run_dir: Path, records: list[RoundRecord]) -> list:
    found = trackers(cfg, run_dir)
    for record in records:
        for tracker in found:
            tracker.on_round_end(record, None)
    for tracker in found:
        tracker.on_run_end(None)
    return found


def _expected(records: list[RoundRecord]) -> dict[str, dict[int, float]]:
    """{metric: {round: value}}, as rounds.csv has it (an empty cell is no point)."""
    expected: dict[str, dict[int, float]] = {}
    for record in records:
        for name, value in metrics(record).items():
            expected.setdefault(name, {})[record.round] = value
    return expected


def test_no_tracking_options_means_no_trackers_and_no_imports(tmp_path: Path) -> None:
    assert trackers(RunConfig(), tmp_path / "run") == []
    probe = (
        "import sys; from pathlib import Path; from fedsim.ground.config import RunConfig; "
        "from fedsim.outputs.tracking import trackers; "
        "assert trackers(RunConfig(), Path('r')) == []; "
        "print(sorted(m for m in ('mlflow', 'tensorboard', 'torch.utils.tensorboard') "
        "if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_metrics_are_the_rounds_csv_numbers_without_empty_cells() -> None:
    first, second = _rounds()[:2]
    assert set(metrics(first)) == {
        "central_loss",
        "central_accuracy",
        "round_seconds",
        "clients_sampled",
        "clients_failed",
        "bytes_down",
        "bytes_up",
        "sim_clock",
        "stragglers",
    }
    # --dp off, and not a personal run: empty cells
    assert set(metrics(second)) == set(METRICS) - {"dp_epsilon", *PERSONAL_ROUND_COLUMNS}
    assert metrics(second)["clients_failed"] == 1.0
    assert metrics(second)["eval_accuracy_p10"] == pytest.approx(0.22)
    judged = [
        dataclasses.replace(client, personal_loss=0.5, personal_accuracy=0.9 - 0.2 * client.client)
        for client in second.clients
        if client.phase == "evaluate"
    ]
    personal = dataclasses.replace(second, clients=judged)  # a personal algorithm's round
    assert metrics(personal)["personal_accuracy"] == pytest.approx(0.8)
    assert {"personal_loss", "personal_accuracy_p10", "personal_accuracy_std"} < set(
        metrics(personal)
    )


def test_tensorboard_event_files_hold_the_config_and_every_round(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    records = _rounds()
    cfg = RunConfig(tensorboard=str(tmp_path / "tb"), seed=7)
    _run(cfg, tmp_path / "results" / "run-a", records)

    log_dir = tmp_path / "tb" / "run-a"  # one folder per run, named as the run folder
    accumulator = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    expected = _expected(records)
    assert set(accumulator.Tags()["scalars"]) == set(expected)
    for name, points in expected.items():
        logged = {event.step: event.value for event in accumulator.Scalars(name)}
        assert logged == pytest.approx(points, rel=1e-6), name
    (text,) = accumulator.Tensors("config/text_summary")
    table = text.tensor_proto.string_val[0].decode()
    assert "| seed | 7 |" in table and f"| tensorboard | {tmp_path / 'tb'} |" in table


def test_a_resumed_run_replaces_the_rounds_after_its_checkpoint(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg, run_dir = RunConfig(tensorboard=str(tmp_path / "tb")), tmp_path / "run-b"
    records = _rounds()
    _run(cfg, run_dir, records)  # "crashed" after round 2, checkpointed after round 1
    again = RoundRecord(round=2, train_loss=0.123, central_loss=0.5, central_accuracy=0.9)
    _run(cfg, run_dir, [again])  # resumed: round 2 once more

    assert len(list((tmp_path / "tb" / "run-b").glob("events.out.tfevents.*"))) == 2
    accumulator = EventAccumulator(str(tmp_path / "tb" / "run-b"), size_guidance={"scalars": 0})
    accumulator.Reload()
    train = [(e.step, e.value) for e in accumulator.Scalars("train_loss")]
    assert train == [(1, pytest.approx(2.0)), (2, pytest.approx(0.123))]
    assert [e.step for e in accumulator.Scalars("eval_loss")] == [1]  # round 2's is gone


def test_mlflow_file_store_holds_the_params_and_each_metric_history(tmp_path: Path) -> None:
    import mlflow

    records = _rounds()
    store = tmp_path / "mlruns"
    cfg = make_config(mlflow=str(store), clients=5, strategy="fedavgm")
    (tracker,) = _run(cfg, tmp_path / "results" / "run-c", records)

    client = mlflow.MlflowClient(tracking_uri=store.as_uri())
    experiment = client.get_experiment_by_name("fedsim")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_id == tracker.run_id and run.info.run_name == "run-c"
    assert run.info.status == "FINISHED"
    assert run.data.tags["fedsim.run_dir"] == str((tmp_path / "results" / "run-c").resolve())
    assert run.data.params == {k: str(v) for k, v in cfg.flat().items()}
    assert run.data.params["server_lr"] == "None" and run.data.params["clients"] == "5"
    expected = _expected(records)
    assert set(run.data.metrics) == set(expected)
    for name, points in expected.items():
        history = client.get_metric_history(run.info.run_id, name)
        assert {m.step: m.value for m in history} == pytest.approx(points, rel=1e-12), name
        assert len(history) == len(points), name

    # a second run of the experiment lands in the same MLflow experiment, side by side
    _run(cfg, tmp_path / "results" / "run-d", records[:1])
    names = {r.info.run_name for r in client.search_runs([experiment.experiment_id])}
    assert names == {"run-c", "run-d"}


def test_mlflow_uris_with_a_scheme_are_passed_as_they_are(tmp_path: Path) -> None:
    assert mlflow_uri("http://tracking.example:5000") == "http://tracking.example:5000"
    assert mlflow_uri("sqlite:///mlflow.db") == "sqlite:///mlflow.db"
    assert mlflow_uri("file:///tmp/mlruns") == "file:///tmp/mlruns"
    assert mlflow_uri(str(tmp_path / "store")) == (tmp_path / "store").resolve().as_uri()
    assert (tmp_path / "store").is_dir()


@pytest.mark.parametrize("option", ["tensorboard", "mlflow"])
def test_a_folder_that_cannot_be_made_is_a_config_error(tmp_path: Path, option: str) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    cfg = RunConfig(**{option: str(blocker / "tracking")})
    with pytest.raises(ConfigError, match=f"^--{option}: cannot create ") as caught:
        trackers(cfg, tmp_path / "run")
    assert "\n" not in str(caught.value)


def test_an_mlflow_server_that_does_not_answer_is_a_config_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:  # a local port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cfg = RunConfig(mlflow=f"http://127.0.0.1:{port}")
    started = time.perf_counter()
    with pytest.raises(ConfigError, match=f"^--mlflow: http://127.0.0.1:{port}: no server ans"):
        trackers(cfg, tmp_path / "run")
    assert time.perf_counter() - started < 5  # not MLflow's minutes of retries


@pytest.mark.parametrize(
    ("option", "module"), [("tensorboard", "torch.utils.tensorboard"), ("mlflow", "mlflow")]
)
def test_a_missing_package_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, option: str, module: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    with pytest.raises(ConfigError, match=f'--{option}: .*pip install "fedsim\\[tracking\\]"'):
        trackers(RunConfig(**{option: str(tmp_path / "t")}), tmp_path / "run")
