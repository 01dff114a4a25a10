"""fedsim as a Flower App, run by Flower's own machinery: `flwr run .` against a local
SuperLink, once with Flower's simulation runtime and once with the Deployment Engine
(SuperNodes as separate processes), both offline and on loopback.

Each test starts its SuperLink (and SuperNodes) in process groups of its own, on free
ports, with a Flower home folder of its own, and stops everything they started.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pandas as pd
import pytest

from fedsim.front import flower_app
from fedsim.ground.config import RunConfig
from fedsim.ground.errors import ConfigError
from fedsim.runner.options import every
from tests.conftest import ROOT
from tests.services import LOOPBACK_ONLY, Services, free_port, wait_for

BIN = Path(sys.executable).parent
RUN_CONFIG = "clients=2 num-server-rounds=1 batch-size=16 lr=0.05"
METRICS = ["train_loss", "eval_loss", "eval_accuracy", "central_loss", "central_accuracy"]


def _app_section() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]


def test_app_config_is_every_option_at_its_default(monkeypatch) -> None:
    monkeypatch.delenv("FEDSIM_DATA", raising=False)
    config = _app_section()["config"]
    assert flower_app.config_from(config) == RunConfig()
    options = [flower_app.option_name(key) for key in config]
    assert sorted(options) == sorted(name for name in every() if name != "ray_address")


def test_run_config_is_read_like_the_command_line() -> None:
    cfg = flower_app.config_from({"num-server-rounds": 5, "lr": 1, "augment": True})
    assert (cfg.rounds, cfg.lr, cfg.augment) == (5, 1.0, True)
    assert flower_app.config_from({"gpus-per-client": "auto"}).gpus_per_client is None
    with pytest.raises(ConfigError, match=r"^local-epoch: is not a fedsim option"):
        flower_app.config_from({"local-epoch": 2})
    with pytest.raises(ConfigError, match=r"^--lr: got -1\.0, must be > 0"):
        flower_app.config_from({"lr": -1})


def _environment(folder: Path, port: int, data: Path) -> dict[str, str]:
    """A Flower home of the test's own whose default connection is our SuperLink; no
    network, no package installs, a private Ray for Flower's simulation runtime, and the
    data every process reads (the app config leaves `data` to $FEDSIM_DATA)."""
    home = folder / "flwr-home"
    home.mkdir()
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "fedsim-test"\n\n'
        f'[superlink.fedsim-test]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",  # the SuperLink starts flower-superexec
        "FLWR_HOME": str(home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "RAY_ADDRESS": "local",
        "RAY_USAGE_STATS_ENABLED": "0",
        **LOOPBACK_ONLY,
        "FEDSIM_DATA": str(data),
    }


def _start_superlink(services: Services, folder: Path, env: dict, port: int, *mode: str) -> None:
    log = folder / "superlink.log"
    args = [str(BIN / "flower-superlink"), "--insecure", *mode, "--host", "127.0.0.1"]
    superlink = services.start([*args, "--port", str(port)], log, env=env, cwd=folder)
    wait_for(superlink, log, "Uvicorn running", timeout=60)


def _flwr_run(env: dict[str, str], results: Path, *extra: str) -> subprocess.CompletedProcess:
    """`flwr run .` from the project folder, following the run's log to its end."""
    run_config = f'{RUN_CONFIG} results-dir="{results}" name="run"'
    return subprocess.run(
        [str(BIN / "flwr"), "run", ".", "--stream", "--run-config", run_config, *extra],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )


def _check_run(done: subprocess.CompletedProcess, run_dir: Path) -> pd.DataFrame:
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "round 1/1" in done.stdout  # the ServerApp's progress, streamed back by Flower
    config = json.loads((run_dir / "config.json").read_text())
    assert (config["status"], config["engine"]) == ("complete", "flower-app")
    frame = pd.read_csv(run_dir / "rounds.csv")
    assert frame["round"].tolist() == [0, 1]
    assert frame["clients_sampled"].tolist() == [0, 2]
    assert (frame["clients_failed"] == 0).all()
    assert frame.loc[1, METRICS].notna().all()
    return frame


@pytest.fixture(scope="module")
def simulated(tmp_path_factory: pytest.TempPathFactory, tiny_cifar: Path):
    """`flwr run .` on a SuperLink in simulation mode: the run and its rounds."""
    folder = tmp_path_factory.mktemp("flwr-simulation")
    port = free_port()
    env = _environment(folder, port, tiny_cifar)
    services = Services()
    try:
        _start_superlink(services, folder, env, port, "--simulation")
        federation = "num-supernodes=2 client-resources-num-cpus=1"
        done = _flwr_run(env, folder / "results", "--federation-config", federation)
    finally:
        survivors = services.stop()
    assert not survivors, f"processes left running: {survivors}"
    return done, folder / "results" / "run"


def test_flwr_run_on_the_simulation_runtime(simulated) -> None:
    done, run_dir = simulated
    frame = _check_run(done, run_dir)
    assert (run_dir / "model.pt").exists()
    assert frame.loc[1, "central_accuracy"] > 0.2  # the generated classes are learnable


def test_deployment_engine_runs_the_same_training(simulated, tiny_cifar: Path, tmp_path) -> None:
    """A SuperLink and two SuperNodes, each reading the data itself and told its partition
    by the server (no node config needed): same seed, same numbers as the simulation."""
    port = free_port()
    env = _environment(tmp_path, port, tiny_cifar)
    services = Services()
    try:
        _start_superlink(services, tmp_path, env, port)
        for node in range(2):
            args = [str(BIN / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{port}"]
            services.start(
                [*args, "--port", str(free_port())],
                tmp_path / f"supernode-{node}.log",
                env=env,
                cwd=tmp_path,
            )
        done = _flwr_run(env, tmp_path / "results")
    finally:
        survivors = services.stop()
    assert not survivors, f"processes left running: {survivors}"
    deployed = _check_run(done, tmp_path / "results" / "run")
    simulated_frame = pd.read_csv(simulated[1] / "rounds.csv")
    pd.testing.assert_frame_equal(deployed[METRICS], simulated_frame[METRICS])
