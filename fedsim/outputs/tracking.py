"""Experiment tracking in the tools people already use: TensorBoard and MLflow.

`--tensorboard DIR` and `--mlflow URI` each add a round callback (fedsim.outputs) that
logs the resolved config once and every rounds.csv number of every round, at step =
round. rounds.csv stays the record; these are copies in a viewer's format. Each package
is imported only when its option is set (`pip install "fedsim[tracking]"`).

Resumed runs (`--resume`): TensorBoard gets a new event file in the same folder, which
starts by purging the steps from the resumed round on, so rounds the crashed process
logged after its last checkpoint are replaced rather than doubled. MLflow gets a new
MLflow run of the same name (tagged with the run folder), holding the rounds from the
resumed one on.
"""

from __future__ import annotations

import os
import socket
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from fedsim.ground.config import RunConfig
from fedsim.ground.errors import ConfigError
from fedsim.ground.option import flag
from fedsim.outputs.callbacks import RoundCallback
from fedsim.outputs.files import check_writable
from fedsim.outputs.records import RoundRecord, round_columns

INSTALL = 'pip install "fedsim[tracking]"'
EXPERIMENT = "fedsim"  # the MLflow experiment every run goes to
RUN_DIR_TAG = "fedsim.run_dir"  # MLflow run tag: the run folder, to find a run's MLflow runs
# The step is the round; a personal run's columns are empty cells in any other run
METRICS = tuple(c for c in round_columns(personal=True) if c != "round")


def check(cfg: RunConfig) -> None:
    """What can be known of the trackers' targets before the run folder is claimed: a
    folder can be written, the packages import (seconds, MLflow's: after the quick
    check), a tracking server answers."""
    if cfg.tensorboard:
        check_writable(flag("tensorboard"), Path(cfg.tensorboard))
        _tensorboard_writer()
    if cfg.mlflow:
        uri = cfg.mlflow
        if len(urlparse(uri).scheme) <= 1:  # a folder (a Windows drive letter is a path)
            check_writable(flag("mlflow"), Path(uri).expanduser())
        _mlflow()
        _check_server(uri)


def _tensorboard_writer() -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError(
            flag("tensorboard"), f"needs the tensorboard package: {INSTALL}"
        ) from None
    return SummaryWriter


def _mlflow() -> tuple[Any, Any, Any]:
    try:
        import mlflow
        from mlflow.entities import Metric, Param
    except ImportError:
        raise ConfigError(flag("mlflow"), f"needs the mlflow package: {INSTALL}") from None
    return mlflow, Metric, Param


def trackers(cfg: RunConfig, run_dir: Path) -> list[Any]:
    """The tracking callbacks `cfg` asks for (none: nothing is imported)."""
    found: list[Any] = []
    if cfg.tensorboard:
        found.append(TensorBoardTracker(cfg, run_dir))
    if cfg.mlflow:
        found.append(MlflowTracker(cfg, run_dir))
    return found


def metrics(record: RoundRecord) -> dict[str, float]:
    """The round's rounds.csv numbers (an empty cell, None, is left out)."""
    values = {name: getattr(record, name) for name in METRICS}
    return {name: float(value) for name, value in values.items() if value is not None}


def _make_folder(option: str, folder: Path) -> Path:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(
            flag(option), f"cannot create {folder}: {error.strerror or error}"
        ) from None
    return folder


def _config_markdown(cfg: RunConfig) -> str:
    rows = [f"| {name} | {_cell(value)} |" for name, value in cfg.flat().items()]
    return "\n".join(["| option | value |", "| --- | --- |", *rows])


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|")


class TensorBoardTracker(RoundCallback):
    """Event files in `<--tensorboard>/<run folder name>`, so an experiment's runs sit
    side by side in one `tensorboard --logdir`: the config as text, each rounds.csv
    number as a scalar, flushed every round."""

    def __init__(self, cfg: RunConfig, run_dir: Path) -> None:
        self._summary_writer = _tensorboard_writer()
        self.cfg = cfg
        self.log_dir = _make_folder("tensorboard", Path(cfg.tensorboard) / run_dir.name)
        self._writer: Any = None  # opened at the first round, which it purges from

    def on_round_end(self, record: RoundRecord, arrays: Any) -> None:
        if self._writer is None:
            # purge_step: a resumed run's file hides what an earlier file holds from
            # this round on (TensorBoard's own resume mechanism)
            self._writer = self._summary_writer(str(self.log_dir), purge_step=record.round)
            self._writer.add_text("config", _config_markdown(self.cfg), record.round)
        for name, value in metrics(record).items():
            self._writer.add_scalar(name, value, record.round)
        self._writer.flush()

    def on_run_end(self, arrays: Any) -> None:
        if self._writer is not None:
            self._writer.close()


def mlflow_uri(value: str) -> str:
    """A URI with a scheme (http:, https:, file:, sqlite:, ...) as it is; anything else
    is a folder for a local file store, made absolute."""
    scheme = urlparse(value).scheme
    if len(scheme) > 1:  # a Windows drive letter is a path
        return value
    folder = _make_folder("mlflow", Path(value).expanduser().resolve())
    return folder.as_uri()


class MlflowTracker(RoundCallback):
    """An MLflow run named after the run folder in experiment "fedsim": the config as
    params, each rounds.csv number as a metric at step = round. The tracking URI is
    this client's own; MLflow's global state (mlflow.set_tracking_uri) is left alone.

    Recent MLflow (3.17) refuses a file store unless MLFLOW_ALLOW_FILE_STORE is true; a
    folder sets it for this process (unless already set), and `mlflow ui` needs
    it too: `MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri DIR`.

    A tracking server that stops answering mid-run does not stop the training: the
    error is said once on stderr and the tracker stops logging (rounds.csv has it all).
    """

    def __init__(self, cfg: RunConfig, run_dir: Path) -> None:
        mlflow, Metric, Param = _mlflow()
        self._metric = Metric
        self.uri = mlflow_uri(cfg.mlflow)
        _check_server(self.uri)
        if self.uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        try:
            self.client = mlflow.MlflowClient(tracking_uri=self.uri)
            experiment_id = self._experiment_id()
            run = self.client.create_run(
                experiment_id,
                run_name=run_dir.name,
                tags={RUN_DIR_TAG: str(run_dir.resolve())},
            )
            self.run_id = run.info.run_id
            params = [Param(name, str(value)) for name, value in cfg.flat().items()]
            for start in range(0, len(params), 100):  # MLflow's batch limit
                self.client.log_batch(self.run_id, params=params[start : start + 100])
        except Exception as error:
            raise ConfigError(flag("mlflow"), f"{self.uri}: {_one_line(error)}") from None
        self._broken = False

    def _experiment_id(self) -> str:
        experiment = self.client.get_experiment_by_name(EXPERIMENT)
        if experiment is not None:
            return experiment.experiment_id
        try:
            return self.client.create_experiment(EXPERIMENT)
        except Exception:  # another run created it meanwhile
            experiment = self.client.get_experiment_by_name(EXPERIMENT)
            if experiment is None:
                raise
            return experiment.experiment_id

    def on_round_end(self, record: RoundRecord, arrays: Any) -> None:
        now = int(time.time() * 1000)
        batch = [
            self._metric(name, value, now, record.round) for name, value in metrics(record).items()
        ]
        self._call(f"round {record.round}", lambda: self.client.log_batch(self.run_id, batch))

    def on_run_end(self, arrays: Any) -> None:
        self._call("the run's end", lambda: self.client.set_terminated(self.run_id))

    def _call(self, what: str, call: Any) -> None:
        if self._broken:
            return
        try:
            call()
        except Exception as error:
            self._broken = True
            print(
                f"fedsim: --mlflow: {what} not logged, stopped logging to {self.uri} "
                f"({_one_line(error)}); rounds.csv has every round",
                file=sys.stderr,
                flush=True,
            )


def _check_server(uri: str, timeout: float = 10.0) -> None:
    """Fail in seconds on a tracking server nobody answers at, not after MLflow's
    retries (minutes); behind a proxy that would carry the requests, leave it to MLflow."""
    parts = urlparse(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return
    host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    if parts.scheme in urllib.request.getproxies() and not urllib.request.proxy_bypass(host):
        return
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as error:
        why = error.strerror or str(error) or type(error).__name__
        raise ConfigError(
            flag("mlflow"), f"{uri}: no server answers at {host}:{port} ({why})"
        ) from None


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
