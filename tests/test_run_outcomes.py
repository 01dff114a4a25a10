"""How a run ends, said truthfully: its status, its exit code and its one error line,
through the real engine (issue 25; each case reproduced first).

- a run that ended for a reason keeps it on --resume, unless the resume trains further;
- a run in which no update ever reached the server is not `complete`, and says why in
  clients.csv's words (failed, straggler);
- an experiment counts a run complete by its status, finishes a run killed after its
  last round, and takes over a folder fedsim left half-made;
- schedulers' signals (SIGTERM or SIGHUP to the whole process group), a lost Ray node, a
  full disk and a run folder removed mid-run each end in one line and a true status;
- a second process cannot resume a run that is going, and a stopped client process
  does not outlive the run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import fedsim
from fedsim.front.api import RunsNotComplete
from tests.conftest import ROOT, leftovers_until, run_cli, simulate, wait_for_rounds

STATUS_KEYS = ("status", "error")


def _status(run_dir: Path) -> dict:
    document = json.loads((run_dir / "config.json").read_text())
    return {key: document.get(key) for key in STATUS_KEYS}


def _one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr[-3000:]
    return errors[0]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            "--client-failure-rate 1 --max-failed-rounds 3",
            "every sampled client failed in all 2 rounds (the model is the initial one)",
        ),
        (
            "--deadline 0.001",
            "no update reached the server in all 2 rounds (the model is the initial one): "
            "clients.csv says straggler for 4; --deadline 0.001 simulated seconds",
        ),
    ],
    ids=["failures-below-max-failed-rounds", "deadline-shorter-than-every-client"],
)
def test_a_run_without_any_update_is_not_complete(options, message, tiny_cifar, tmp_path) -> None:
    done, frame = simulate(tiny_cifar, tmp_path, "none", f"--clients 2 --rounds 2 {options}")
    assert done.returncode == 1
    assert message in _one_error_line(done.stderr)
    assert _status(tmp_path / "none")["status"] == "aborted"
    assert frame["round"].tolist() == [0, 1, 2]
    assert not (tmp_path / "none" / "model.pt").exists()


def test_an_experiment_goes_by_the_runs_status(tiny_cifar, tmp_path) -> None:
    """Run 1 completes and run 2 aborts; a rerun says so and exits 1 again. A run killed
    after its last round is finished by the rerun without training (or Ray); one whose folder
    fedsim left half-made is run in it. Resuming a complete run with another run's
    checkpoint is refused before its status is touched. The aborted run keeps its
    reason on --resume, unless the resume trains on."""
    options = ["--client-failure-rate", "0,1", "--clients", "2", "--rounds", "2"]
    options += ["--max-failed-rounds", "2", "--data", str(tiny_cifar)]
    options += ["--results-dir", str(tmp_path), "--name", "sweep"]
    first = run_cli(*options, timeout=300)
    assert first.returncode == 1, first.stderr[-3000:]
    sweep = tmp_path / "sweep"
    good, bad = sweep / "seed-0_client-failure-rate-0.0", sweep / "seed-0_client-failure-rate-1.0"
    summary = pd.read_csv(sweep / "summary.csv").set_index("run")
    assert summary.loc[good.name, ["complete", "status"]].tolist() == [True, "complete"]
    assert summary.loc[bad.name, ["complete", "status"]].tolist() == [False, "aborted"]

    # killed after its last round: status running, no model.pt
    document = json.loads((good / "config.json").read_text())
    (good / "config.json").write_text(json.dumps({**document, "status": "running"}))
    (good / "model.pt").unlink()
    ray_tmp = tmp_path / "ray-tmp"  # where a Ray instance would keep its session
    second = run_cli(*options, timeout=300, env={**os.environ, "RAY_TMPDIR": str(ray_tmp)})
    assert second.returncode == 1
    assert f"{bad.name} ended aborted (every sampled client failed" in second.stdout
    assert "all 2 rounds were done" in second.stdout and not ray_tmp.exists()  # no Ray
    assert _status(good)["status"] == "complete" and (good / "model.pt").exists()
    kept = json.loads((good / "config.json").read_text())["timings_seconds"]
    assert kept == document["timings_seconds"] and kept["rounds"] > 0  # the run's own
    rounds = pd.read_csv(good / "rounds.csv")

    # another run's checkpoint in a complete run's folder
    other = tmp_path / "other"
    shutil.copytree(good, other)
    changed = json.loads((other / "config.json").read_text())
    changed["config"]["strategy"] = "fedprox"
    (other / "config.json").write_text(json.dumps(changed))
    refused = run_cli("--resume", str(other), timeout=120)
    assert refused.returncode == 2
    assert "holds a FedAvg strategy" in _one_error_line(refused.stderr)
    assert _status(other)["status"] == "complete"

    # killed between claiming the folder and writing config.json
    shutil.rmtree(good)
    good.mkdir()
    (good / ".config.json.tmp").write_text("{")
    third = run_cli(*options, timeout=300)
    assert third.returncode == 1
    assert _status(good)["status"] == "complete"
    assert (
        pd.read_csv(good / "rounds.csv")
        .drop(columns="round_seconds")
        .equals(rounds.drop(columns="round_seconds"))
    )

    # the library says it with a warning, each time, as a notebook's rerun of a cell
    grid = dict(client_failure_rate=[0.0, 1.0], clients=2, rounds=2, max_failed_rounds=2)
    grid |= dict(data=str(tiny_cifar), results_dir=str(tmp_path), name="sweep")
    for _ in range(2):
        with pytest.warns(RunsNotComplete, match=f"1 of 2 runs did not complete: {bad.name}"):
            summary = fedsim.sweep(**grid)
        assert sorted(summary.status) == ["aborted", "complete"]

    # a run that ended for a reason keeps it on --resume, unless the resume trains on
    ended = _status(bad)
    assert ended["status"] == "aborted" and "every sampled client failed" in ended["error"]
    resumed = run_cli("--resume", str(bad), timeout=120)
    assert resumed.returncode == 1
    line = _one_error_line(resumed.stderr)
    assert "ended aborted after round 2" in line and "nothing left to resume" in line
    assert _status(bad) == ended and not (bad / "model.pt").exists()
    further = run_cli("--resume", str(bad), "--rounds", "3", timeout=120)
    assert further.returncode == 1
    assert "every sampled client failed in all 3 rounds" in _one_error_line(further.stderr)
    assert pd.read_csv(bad / "rounds.csv")["round"].tolist() == [0, 1, 2, 3]


def _client_process(ray_tmp: Path) -> int:
    """The pid of a client actor of the run (one look at /proc missed it once in a full
    suite, so `leftovers_until` looks again)."""
    found = leftovers_until(ray_tmp, lambda found: any(map(_is_client, found)), limit=20)
    actors = [line for line in found if _is_client(line)]
    assert actors, f"no client actor among {found}"
    return int(actors[0].split()[0])


def _is_client(process: str) -> bool:
    return "ray::ClientAppActor" in process


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_a_schedulers_signal_to_the_process_group_is_an_interrupt(
    stop, tiny_cifar, tmp_path, start_run
) -> None:
    """What `timeout`, Slurm and a closed terminal send, to every process of the group.
    Before it: a second process may not resume the run that is going, and one client
    process is stopped (SIGSTOP), which must not outlive the run."""
    run_dir = tmp_path / "stopped"
    where = ["--data", str(tiny_cifar), "--results-dir", str(tmp_path), "--name", "stopped"]
    process, ray_tmp = start_run(["--clients", "2", "--rounds", "500", *where])
    wait_for_rounds(run_dir / "rounds.csv", 1, process)
    second = run_cli("--resume", str(run_dir), timeout=120)
    assert second.returncode == 2 and "is in use" in _one_error_line(second.stderr)
    os.kill(_client_process(ray_tmp), signal.SIGSTOP)

    os.killpg(process.pid, stop)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr[-3000:]
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert "SIGTERM received" not in stderr  # Ray's own handler's stack dump
    assert _status(run_dir)["status"] == "interrupted"
    assert leftovers_until(ray_tmp, lambda found: not found, limit=10) == []


def test_a_lost_ray_node_is_one_line_and_a_status(tiny_cifar, tmp_path, start_run) -> None:
    run_dir = tmp_path / "lost"
    where = ["--data", str(tiny_cifar), "--results-dir", str(tmp_path), "--name", "lost"]
    process, ray_tmp = start_run(["--clients", "2", "--rounds", "500", *where])
    wait_for_rounds(run_dir / "rounds.csv", 1, process)
    subprocess.run(["pkill", "-9", "-f", f"raylet.*{ray_tmp}"], check=True)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 1
    assert "the Ray node died under the run" in _one_error_line(stderr)
    status = _status(run_dir)
    assert status["status"] == "failed" and "Ray node died" in status["error"]


def test_a_run_folder_removed_mid_run_is_one_line(tiny_cifar, tmp_path, start_run) -> None:
    run_dir = tmp_path / "removed"
    where = ["--data", str(tiny_cifar), "--results-dir", str(tmp_path), "--name", "removed"]
    process, _ = start_run(["--clients", "2", "--rounds", "500", *where])
    wait_for_rounds(run_dir / "rounds.csv", 1, process)
    while run_dir.exists():  # as `rm -rf` again would: the run may add a file meanwhile
        shutil.rmtree(run_dir, ignore_errors=True)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 1
    assert "was removed while the run was going" in _one_error_line(stderr)


FULL_DISK = """
set -u
mount -t tmpfs -o size=$SIZE tmpfs "$RESULTS"
"$PYTHON" simulate.py $OPTIONS --results-dir "$RESULTS" --name full 2> "$LOGS/first.err"
echo $? > "$LOGS/first.code"
ls -A "$RESULTS/full" > "$LOGS/first.files"
cp "$RESULTS/full/config.json" "$LOGS/first.json"
mount -o remount,size=8m "$RESULTS"
"$PYTHON" simulate.py --resume "$RESULTS/full" 2> "$LOGS/resumed.err"
echo $? > "$LOGS/resumed.code"
cp "$RESULTS/full/rounds.csv" "$LOGS/rounds.csv"
"""


@pytest.mark.parametrize(
    ("strategy", "size", "full"),
    [
        ("fedavg", "400k", "checkpoint.pt: No space left on device"),
        ("scaffold", "800k", "client_states.sqlite: database or disk is full"),
    ],
    ids=["checkpoint", "client memories"],
)
def test_a_full_disk_is_one_line_and_resume_goes_on_once_space_is_freed(
    strategy, size, full, tiny_cifar, tmp_path
) -> None:
    """A file system that holds round 0's checkpoint but not round 1's (the new one is
    written beside the old), or, for SCAFFOLD, not round 1's clients' memories: the run
    stops with one line, says why in config.json and leaves no temporary file; with room
    again, --resume goes on to the end (with an uninterrupted run's numbers, checked for
    FedAvg). The file system is a tmpfs in a mount namespace of the test's own."""
    run = f"--clients 2 --rounds 3 --strategy {strategy}"
    whole = None
    if strategy == "fedavg":  # the numbers an uninterrupted run gives (once is enough)
        done, whole = simulate(tiny_cifar, tmp_path, "whole", run)
        assert done.returncode == 0, done.stderr[-2000:]
    results, logs = tmp_path / "small", tmp_path / "logs"
    results.mkdir()
    logs.mkdir()
    env = {**os.environ, "RESULTS": str(results), "LOGS": str(logs), "SIZE": size}
    env |= {"PYTHON": sys.executable, "OPTIONS": f"{run} --data {tiny_cifar}"}
    script = subprocess.run(
        ["unshare", "--mount", "--map-root-user", "sh", "-c", FULL_DISK],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert script.returncode == 0, script.stderr[-2000:]
    assert (logs / "first.code").read_text().strip() == "1"
    line = _one_error_line((logs / "first.err").read_text())
    assert "cannot write" in line and full in line
    first = json.loads((logs / "first.json").read_text())
    assert first["status"] == "failed" and full.rpartition(": ")[2] in first["error"]
    assert not [f for f in (logs / "first.files").read_text().split() if f.endswith(".tmp")]
    assert (logs / "resumed.code").read_text().strip() == "0", (logs / "resumed.err").read_text()
    resumed = pd.read_csv(logs / "rounds.csv")
    assert resumed["round"].tolist() == [0, 1, 2, 3]
    if whole is not None:
        assert resumed.drop(columns="round_seconds").equals(whole.drop(columns="round_seconds"))
