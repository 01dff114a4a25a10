"""Faults through the real engine: no hang and no silent corruption.

A frozen client, a client process that dies, a model that diverges, SIGTERM, two quick
Ctrl-C, a kill -9 between the last round and the final status, and input that looks
valid until the run starts. Each of these was reproduced first (issue 14).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from tests.conftest import ROOT, leftovers, leftovers_until, run_cli, simulate, wait_for_rounds


def _faulty(fault: str, data, results, name: str, options: str, **kwargs):
    """`simulate.py OPTIONS` with one misbehaving client (tests/faulty_clients.py)."""
    command = [sys.executable, "-m", "tests.faulty_clients", fault, *options.split()]
    command += ["--data", str(data), "--results-dir", str(results), "--name", name]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, **kwargs)
    return done, pd.read_csv(results / name / "clients.csv")


def _status(run_dir) -> dict:
    return json.loads((run_dir / "config.json").read_text())


def test_a_frozen_client_is_cut_off_and_the_run_ends(tiny_cifar, tmp_path, all_cpus) -> None:
    """Client 0 never returns in round 2 (client 1, in the other actor, does): the round
    timeout counts it, its actor ends itself (watchdog) and is restarted, round 3 has
    every client, and the run ends."""
    options = "--clients 2 --rounds 3 --round-timeout 20 --fraction-evaluate 0"
    started = time.monotonic()
    done, clients = _faulty("freeze:2:0", tiny_cifar, tmp_path, "frozen", options, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert time.monotonic() - started < 150
    status = {(r, c): s for r, c, s in clients[["round", "client", "status"]].values.tolist()}
    assert status == {
        (1, 0): "ok",
        (1, 1): "ok",
        (2, 0): "timeout",
        (2, 1): "ok",
        (3, 0): "ok",
        (3, 1): "ok",
    }
    assert "round 2: 1 train timeout" in done.stderr
    config = _status(tmp_path / "frozen")
    assert config["status"] == "complete" and config["client_outcomes"] == {"timeout": 1}


def test_a_killed_client_process_is_replaced(tiny_cifar, tmp_path) -> None:
    """The process running client 0 dies in round 2: its clients fail that round (said
    on the console and in config.json), Ray restarts the actor, later rounds lose none."""
    options = "--clients 2 --rounds 4 --fraction-evaluate 0"
    done, clients = _faulty("kill:2:0", tiny_cifar, tmp_path, "killed", options, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    failed = clients[clients["status"] != "ok"]
    assert failed[["round", "client", "status"]].values.tolist() == [[2, 0, "failed"]]
    assert (clients.loc[clients["round"] > 2, "status"] == "ok").all()
    assert len(clients[clients["round"] > 2]) == 4
    assert "round 2: 1 train failed" in done.stderr
    config = _status(tmp_path / "killed")
    assert config["client_outcomes"] == {"failed": 1} and config["client_errors"]


def test_divergence_stops_the_run_and_says_why(tiny_cifar, tmp_path) -> None:
    done, frame = simulate(tiny_cifar, tmp_path, "diverged", "--clients 2 --rounds 4 --lr 1e12")
    assert done.returncode == 1, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("error: the model diverged in round 1")
    assert frame["round"].tolist() == [0]  # the diverged round is not kept
    config = _status(tmp_path / "diverged")
    assert config["status"] == "diverged" and "diverged" in config["error"]
    assert not (tmp_path / "diverged" / "model.pt").exists()


@pytest.mark.parametrize("option", ["--lr", "--alpha", "--client-failure-rate"])
@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
def test_non_finite_values_are_refused(option, value, tiny_cifar, tmp_path) -> None:
    from fedsim.front.cli import main

    results = tmp_path / "results"
    assert main([option, value, "--data", str(tiny_cifar), "--results-dir", str(results)]) == 2
    assert not results.exists()


def test_sigterm_after_ray_started_is_an_interrupt(tiny_cifar, tmp_path, start_run) -> None:
    where = ["--data", str(tiny_cifar), "--results-dir", str(tmp_path), "--name", "termed"]
    process, ray_tmp = start_run(["--clients", "2", "--rounds", "500", *where])
    wait_for_rounds(tmp_path / "termed" / "rounds.csv", 1, process)
    os.kill(process.pid, signal.SIGTERM)  # what `kill PID` does
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr[-2000:]
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert _status(tmp_path / "termed")["status"] == "interrupted"
    time.sleep(3)
    assert leftovers(ray_tmp) == []


def test_two_quick_ctrl_c_leave_nothing_running(tiny_cifar, tmp_path, start_run) -> None:
    where = ["--data", str(tiny_cifar), "--results-dir", str(tmp_path), "--name", "twice"]
    process, ray_tmp = start_run(["--clients", "2", "--rounds", "500", *where])
    wait_for_rounds(tmp_path / "twice" / "rounds.csv", 1, process)
    os.killpg(process.pid, signal.SIGINT)
    time.sleep(0.3)
    os.killpg(process.pid, signal.SIGINT)
    process.communicate(timeout=60)
    assert process.returncode == 130
    assert leftovers_until(ray_tmp, lambda found: not found, limit=10) == []


def test_resume_finishes_a_killed_runs_bookkeeping_and_refuses_a_damaged_checkpoint(
    tiny_cifar, tmp_path
) -> None:
    done, frame = simulate(tiny_cifar, tmp_path, "late", "--clients 2 --rounds 2")
    assert done.returncode == 0, done.stderr[-2000:]
    run_dir = tmp_path / "late"
    # What a kill -9 after the last round's checkpoint leaves: no model, status running
    (run_dir / "model.pt").unlink()
    config = _status(run_dir)
    (run_dir / "config.json").write_text(json.dumps({**config, "status": "running"}))
    resumed = run_cli("--resume", str(run_dir), timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "all 2 rounds were done" in resumed.stdout and "Ray has" not in resumed.stdout
    assert (run_dir / "model.pt").exists() and _status(run_dir)["status"] == "complete"
    assert pd.read_csv(run_dir / "rounds.csv").equals(frame)
    again = run_cli("--resume", str(run_dir), timeout=120)
    assert "is already complete" in again.stdout

    # A damaged checkpoint is one line, whatever the damage
    checkpoint = run_dir / "checkpoint.pt"
    for damaged in (checkpoint.read_bytes()[:200], b""):
        checkpoint.write_bytes(damaged)
        resumed = run_cli("--resume", str(run_dir), "--rounds", "3", timeout=120)
        assert resumed.returncode == 2
        lines = resumed.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: --resume: "), lines


def test_clients_without_held_out_examples_are_not_evaluated(tiny_cifar, tmp_path) -> None:
    """1,000 clients of one image each: none has a held-out share to evaluate."""
    done, frame = simulate(
        tiny_cifar, tmp_path, "tiny-clients", "--clients 1000 --rounds 1 --fraction-fit 0.01"
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert frame["eval_accuracy"].isna().all() and frame["central_accuracy"].notna().all()


def test_runs_named_alike_get_folders_of_their_own(tmp_path) -> None:
    from fedsim.ground.config import RunConfig
    from fedsim.ground.errors import ConfigError
    from fedsim.runner.folders import claimed_run_dir

    cfg = RunConfig(results_dir=str(tmp_path))
    with claimed_run_dir(cfg) as first, claimed_run_dir(cfg) as second:  # the same second
        assert first != second and second.name.startswith(first.name)
        (first / "config.json").write_text("{}")  # a run began in it: the folder stays
    named = cfg.replace(name="mine")
    with claimed_run_dir(named) as mine:
        (mine / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"--name: .* already exists"), claimed_run_dir(named):
        pass


def test_resume_skips_torn_or_foreign_lines(tmp_path) -> None:
    from fedsim.ground.errors import ConfigError
    from fedsim.outputs.files import truncate_rows

    path = tmp_path / "rounds.csv"
    path.write_text("round,a\n0,1\n1,2\ngarbage\x00\n2,3,4\n3,\n")
    truncate_rows(path, 1, ["round", "a"])
    assert path.read_text().splitlines() == ["round,a", "0,1", "1,2"]
    # a file from before a column was appended gets it, empty
    truncate_rows(path, 1, ["round", "a", "b"])
    assert path.read_text().splitlines() == ["round,a,b", "0,1,", "1,2,"]
    with pytest.raises(ConfigError, match=r"--resume: .* has the columns"):
        truncate_rows(path, 1, ["round", "x"])


def test_nothing_outlives_a_killed_driver_by_more_than_seconds(
    tiny_cifar, tmp_path, start_run
) -> None:
    where = ["--data", str(tiny_cifar), "--results-dir", str(tmp_path), "--name", "killed9"]
    process, ray_tmp = start_run(["--clients", "2", "--rounds", "500", *where])
    wait_for_rounds(tmp_path / "killed9" / "rounds.csv", 1, process)
    os.kill(process.pid, signal.SIGKILL)  # the driver alone, not its process group
    process.wait(timeout=30)
    assert leftovers_until(ray_tmp, lambda found: not found, limit=10) == []


def test_an_error_from_a_client_process_is_said_in_its_own_line() -> None:
    """What Ray and Flower make of an exception raised outside a client's own try (as
    seen when a bench app broke), and the line fedsim reports of it."""
    from fedsim.flower.exchange import _reason

    reason = (
        "<class 'ray.exceptions.RayTaskError(ClientAppException)'>:<'\x1b[36mray::"
        "ClientAppActor.run()\x1b[39m (pid=19327, ip=192.0.2.2)\n"
        '  File "fedsim/protocol.py", line 155, in pack_outcomes\n'
        '    "measured_in": [float(o.measured_in) for o in outcomes],\n'
        "TypeError: float() argument must be a string or a real number, not 'RecordDict'\n\n"
        "The above exception was the direct cause of the following exception:\n\n"
        "flwr.clientapp.client_app.ClientAppException: \n"
        "Exception ClientAppException occurred. Message: float() argument must be a string'>"
    )
    assert _reason(reason) == (
        "TypeError: float() argument must be a string or a real number, not 'RecordDict'"
    )
    assert _reason("the actor died\n") == "the actor died"
