"""Reliability through the real engine: bad input, SIGKILL + resume, Ctrl-C, dropouts."""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.conftest import (
    client_state_rows,
    leftovers,
    run_cli,
    run_in_terminal,
    sentinel_notes_left,
    simulate,
    wait_for_rounds,
)

TIMING = ["round_seconds"]


def _metrics(run_dir: Path) -> pd.DataFrame:
    return pd.read_csv(run_dir / "rounds.csv").drop(columns=TIMING)


def _clients(run_dir: Path) -> pd.DataFrame:
    return pd.read_csv(run_dir / "clients.csv").drop(columns=["seconds"])


# --- bad input: one line, exit code 2, nothing written -------------------------------

BAD_INPUT = [
    (["--clients", "0"], "--clients: got 0, must be ≥ 1"),
    (
        ["--strategy", "fedrep", "--holdout-clients", "0.5", "--val-fraction", "0"],
        "--holdout-clients: held-out clients are judged at the clients' evaluation",
    ),
    (["--strategy", "fedbn"], "--model: cnn has no BatchNorm layer for fedbn to keep"),
    (["--clients", "2.5"], "--clients: must be an integer"),
    (["--rounds", "-1"], "--rounds: got -1, must be ≥ 1"),
    (["--fraction-fit", "0"], "--fraction-fit: got 0.0, must be in (0, 1]"),
    (["--fraction-evaluate", "1.5"], "--fraction-evaluate: got 1.5, must be in [0, 1]"),
    (["--lr", "0"], "--lr: got 0.0, must be > 0"),
    (["--alpha", "-1", "--partition", "dirichlet"], "--alpha: got -1.0, must be > 0"),
    (
        ["--partition", "pathological", "--classes-per-client", "11"],
        "--classes-per-client: got 11, but the data has 10 classes",
    ),
    (["--model", "vgg"], "--model: unknown value 'vgg', choose from cnn, resnet18"),
    (["--strategy", "fedsgd"], "--strategy: unknown value 'fedsgd'"),
    (["--partition", "natural"], "names no groups of its own: give --partition-column"),
    (["--name", "../escape"], "--name: '../escape' must be a plain folder name"),
    (["--gpus-per-client", "0.5"], "--gpus-per-client: got 0.5, but no GPU is visible"),
    (["--clients", "1001"], "--clients: must be ≤ 1000"),
    (["--data", "/nonexistent/cifar"], "--data: /nonexistent/cifar does not exist"),
    (["--bogus", "1"], "unrecognized arguments: --bogus"),
    (["--seed", str(2**40)], "--seed: got 1099511627776, must be in [0, 4294967295]"),
    (["--name", "x" * 300], "--name: has 300 characters, at most 120"),
    (["--alpha", "inf"], "--alpha: must be a finite number, got inf"),
    (["--cpus-per-client", "64"], "--cpus-per-client: got 64, but Ray has 1 CPU;"),
    (["--ray-address", "127.0.0.1:9"], "--ray-address: 127.0.0.1:9 does not answer"),
    (["--resume", "/x", "--lr", "1"], "--resume: takes a run folder and at most --rounds; drop"),
    (["--tensorboard", "/dev/null/tb"], "--tensorboard: /dev/null/tb cannot be written"),
    (["--mlflow", "/dev/null/ml"], "--mlflow: /dev/null/ml cannot be written"),
]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--clients", str(10**9)], "--clients: must be ≤ 1000 (the training examples"),
        (
            ["--strategy", "fedbuff", "--buffer-size", str(10**9)],
            "--buffer-size: the driver would hold 1,000,000,000 client updates",
        ),
    ],
    ids=["a billion clients", "a buffer of a billion updates"],
)
def test_an_impossible_size_is_refused_before_anything_is_allocated_for_it(
    args, message, tiny_cifar, tmp_path
) -> None:
    """Under an 8 GiB address space: anything allocated per client (or per buffered
    update) first would fail long before the refusal (it grew the driver to 23 GB)."""
    limit = 8 * 2**30
    done = run_cli(
        *args,
        "--data",
        str(tiny_cifar),
        "--results-dir",
        str(tmp_path / "results"),
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (limit, limit)),
    )
    assert done.returncode == 2 and done.stderr.startswith(f"error: {message}"), done.stderr
    assert done.stderr.count("\n") == 1 and not (tmp_path / "results").exists()


@pytest.mark.parametrize(("args", "message"), BAD_INPUT, ids=[" ".join(a) for a, _ in BAD_INPUT])
def test_bad_input_is_one_line_and_exit_2(args, message, tiny_cifar, tmp_path) -> None:
    results = tmp_path / "results"
    data = [] if "--data" in args else ["--data", str(tiny_cifar)]
    done = run_cli(*data, "--results-dir", str(results), *args, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert message in lines[0]
    assert not results.exists()


REFUSED = [  # values that used to pass validation and fail later (issue 25)
    (["--name", "a\nb"], "--name: 'a\\nb' must be printable (no newline"),
    (["--dp", "server-fixed", "--dp-noise-multiplier", "1e300"], "must be in (0, 1e+06]"),
    (["--dp", "server-fixed", "--dp-noise-multiplier", "0"], "must be in (0, 1e+06]"),
    (["--strategy", "krum", "--clients", "4", "--num-malicious", "1"], "2 × 1 + 3 = 5 replies"),
    (["--strategy", "multikrum", "--clients", "6", "--num-malicious", "2"], "2 × 2 + 3 = 7"),
    (["--strategy", "fedbuff", "--dp", "server-fixed"], "--dp: fedbuff: its updates arrive"),
    (["--gpus-per-client", "0.00001"], "Ray's smallest share is 0.0001"),
    (
        ["--clients", ",".join(map(str, range(2, 103))), "--seed", ",".join(map(str, range(100)))],
        "grid: holds 10,100 runs, more than 10,000",
    ),
]


@pytest.mark.parametrize(("args", "message"), REFUSED, ids=[m for _, m in REFUSED])
def test_values_a_run_cannot_compute_are_refused(args, message, tmp_path, capsys) -> None:
    from fedsim.front.cli import main

    results = tmp_path / "results"
    assert main([*args, "--results-dir", str(results)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
    assert not results.exists()


@pytest.mark.parametrize(
    ("file", "content"),
    [
        ("rounds.csv", b"garbage\x00,\n\x01\x02"),
        ("rounds.csv", b"round\n0\n"),
        ("rounds.csv", bytes(range(256)) * 4),
        ("config.json", b"{not json"),
    ],
    ids=["garbage-rounds", "foreign-rounds", "binary-rounds", "garbage-config"],
)
def test_plot_on_files_fedsim_did_not_write_is_one_line(file, content, tmp_path, capsys) -> None:
    import json

    from fedsim.front.cli import main
    from fedsim.ground.config import RunConfig

    run_dir = tmp_path / "experiment" / "run"
    run_dir.mkdir(parents=True)
    document = {"status": "complete", "config": RunConfig().as_dict()}
    (run_dir / "config.json").write_text(json.dumps(document))
    (run_dir / file).write_bytes(content)
    assert main(["--plot", str(tmp_path / "experiment")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --plot: "), lines
    assert f"{run_dir / file} is not a" in lines[0], lines


def test_bad_data_folders(tmp_path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    corrupt = tmp_path / "corrupt" / "plain_text"
    corrupt.mkdir(parents=True)
    for split in ("train", "test"):
        (corrupt / f"{split}-00000-of-00001.parquet").write_bytes(b"not a parquet file")
    for folder, message in ((empty, "is not a dataset"), (corrupt.parent, "cannot read")):
        done = run_cli("--data", str(folder), "--results-dir", str(tmp_path / "r"), timeout=120)
        assert done.returncode == 2 and message in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_unwritable_results_dir(tiny_cifar, tmp_path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    done = run_cli("--data", str(tiny_cifar), "--results-dir", str(blocker / "results"))
    assert done.returncode == 2 and "--results-dir" in done.stderr, done.stderr


# --- crash safety, resume and reproducibility ----------------------------------------

# SCAFFOLD over 50 clients, 5 a round: the clients' memories must come back as they were
RUN = "--clients 50 --rounds 6 --batch-size 16 --lr 0.05 --fraction-fit 0.1 --strategy scaffold"
RUN += " --fraction-evaluate 0.1"


def test_sigkill_then_resume_matches_an_uninterrupted_run(tiny_cifar, tmp_path, start_run) -> None:
    done, _ = simulate(tiny_cifar, tmp_path, "whole", RUN)
    assert done.returncode == 0, done.stderr[-2000:]

    killed = tmp_path / "killed"
    where = ["--data", str(tiny_cifar), "--results-dir", str(tmp_path), "--name", "killed"]
    process, temp = start_run([*RUN.split(), *where])
    wait_for_rounds(killed / "rounds.csv", 2, process)
    os.killpg(process.pid, signal.SIGKILL)  # the driver and every Ray process with it
    process.wait(timeout=30)
    assert sentinel_notes_left(temp) == []
    partial = pd.read_csv(killed / "rounds.csv")  # readable, and holds whole rounds only
    assert 3 <= len(partial) < 7 and partial["round"].tolist() == list(range(len(partial)))
    document = json.loads((killed / "config.json").read_text())  # as of the last round
    assert document["status"] == "running" and document["timings_seconds"]["rounds"] > 0

    # The memories of the last rounds are in the store's write-ahead log: a copy of the
    # folder without it holds older memories, and is refused, not trained on
    copied = tmp_path / "copied"
    shutil.copytree(killed, copied, ignore=shutil.ignore_patterns("*-wal", "*-shm"))
    refused = run_cli("--resume", str(copied))
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr[-2000:]
    assert "client_states.sqlite does not hold the clients' memories of round" in refused.stderr

    resumed = run_cli("--resume", str(killed))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _metrics(killed).equals(_metrics(tmp_path / "whole"))
    assert _clients(killed).equals(_clients(tmp_path / "whole"))
    rows = client_state_rows(killed)
    assert len(rows) > 5 and rows == client_state_rows(tmp_path / "whole")  # bytes
    assert len({pid for pid, _, _ in rows}) == len(rows)  # one version each, pruned
    # the server's control variate, and the model
    whole_state, resumed_state = (
        torch.load(run / "checkpoint.pt", weights_only=True) for run in (tmp_path / "whole", killed)
    )
    controls = [
        s["strategy"]["state"]["control"]["__arrayrecord__"] for s in (whole_state, resumed_state)
    ]
    assert controls[0].keys() == controls[1].keys() and controls[0]
    assert all(torch.equal(controls[0][name], controls[1][name]) for name in controls[0])
    whole_model, resumed_model = (
        torch.load(run / "model.pt") for run in (tmp_path / "whole", killed)
    )
    assert all(torch.equal(whole_model[k], resumed_model[k]) for k in whole_model)


def test_ctrl_c_stops_fast_keeps_rounds_and_leaves_no_processes(
    tiny_cifar, tmp_path, start_run
) -> None:
    where = ["--data", str(tiny_cifar), "--results-dir", str(tmp_path), "--name", "stopped"]
    process, ray_tmp = start_run(
        ["--clients", "2", "--rounds", "500", "--strategy", "scaffold", *where]
    )
    wait_for_rounds(tmp_path / "stopped" / "rounds.csv", 2, process)
    os.killpg(process.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    sent = time.monotonic()
    _, stderr = process.communicate(timeout=60)
    assert time.monotonic() - sent < 15, "took too long to stop"
    assert process.returncode == 130, stderr[-2000:]
    assert "interrupted" in stderr
    assert len(pd.read_csv(tmp_path / "stopped" / "rounds.csv")) >= 3
    store = tmp_path / "stopped" / "client_states.sqlite"  # the file alone is the store
    assert store.exists() and not Path(f"{store}-wal").exists()
    time.sleep(1)
    assert leftovers(ray_tmp) == []


@pytest.mark.parametrize("seeds", ["0", "0,1"], ids=["run", "experiment"])
def test_a_closed_console_stops_the_run_as_ctrl_c_does(
    seeds, tiny_cifar, tmp_path, start_run
) -> None:
    """`simulate.py ... | head`: stdout's reader goes away mid-run. An experiment once
    hung here for good (Flower's threads blocked on a Ray it had shut down)."""
    where = ["--data", str(tiny_cifar), "--results-dir", str(tmp_path), "--name", "closed"]
    process, ray_tmp = start_run(["--clients", "2", "--rounds", "500", "--seed", seeds, *where])
    run_dir = tmp_path / "closed" / ("seed-0" if "," in seeds else "")
    wait_for_rounds(run_dir / "rounds.csv", 2, process)
    process.stdout.close()  # the next round's line meets a closed pipe
    closed = time.monotonic()
    process.wait(timeout=60)
    assert time.monotonic() - closed < 15, "took too long to stop"
    stderr = process.stderr.read()
    assert process.returncode == 130, stderr[-2000:]
    assert "its console was closed; completed rounds are kept" in stderr
    assert "Traceback" not in stderr
    assert json.loads((run_dir / "config.json").read_text())["status"] == "interrupted"
    assert len(pd.read_csv(run_dir / "rounds.csv")) >= 3
    time.sleep(1)
    assert leftovers(ray_tmp) == []


# --- client failures -------------------------------------------------------------------


def test_dropouts_are_counted_and_rounds_go_on(tiny_cifar, tmp_path) -> None:
    options = "--clients 4 --rounds 3 --client-failure-rate 0.5"
    done, frame = simulate(tiny_cifar, tmp_path, "a", options)
    assert done.returncode == 0, done.stderr[-2000:]
    assert frame["clients_failed"].iloc[1:].sum() > 0
    assert (frame["clients_failed"] < frame["clients_sampled"]).iloc[1:].any()
    assert "\r" not in done.stdout  # not a terminal: plain lines, no status line
    # the same seed and config, from scratch: the same clients drop, the same numbers;
    # on a terminal, with the status line between the round lines, nothing else changes
    where = ["--data", str(tiny_cifar), "--results-dir", str(tmp_path), "--name", "b"]
    code, shown = run_in_terminal(*options.split(), *where)
    assert code == 0, shown[-2000:]
    assert _metrics(tmp_path / "b").equals(_metrics(tmp_path / "a"))
    assert _clients(tmp_path / "b").equals(_clients(tmp_path / "a"))
    status = r"\r\x1b\[Kround 2/3  (train|evaluate) \d/4 clients  \d+ s  ~\d+ s left"
    assert re.search(status, shown)
    rounds = r"\r\x1b\[K(round \d/3  (?:train_loss|central_loss) [^\r\n\x1b]*)\r\n"
    assert len(re.findall(rounds, shown)) == 4  # each round's line whole, the status cleared


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ("--client-failure-rate 1", "every sampled client failed in 2 rounds in a row"),
        ("--round-timeout 0.01", "every sampled client failed in 2 rounds in a row"),
    ],
    ids=["all-clients-fail", "no-client-answers-in-time"],
)
def test_rounds_without_survivors_stop_the_run(options, message, tiny_cifar, tmp_path) -> None:
    done, frame = simulate(
        tiny_cifar, tmp_path, "doomed", f"--clients 2 --rounds 5 --max-failed-rounds 2 {options}"
    )
    assert done.returncode == 1, done.stderr[-2000:]
    assert message in done.stderr
    assert frame["round"].tolist() == [0, 1, 2]
    assert frame.loc[1:, "train_loss"].isna().all()
    assert (frame.loc[1:, "clients_failed"] == 2).all()
