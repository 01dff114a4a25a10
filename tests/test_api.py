"""fedsim as a library (fedsim.front.api) and the user's own code (experiments/byo),
through the real engine: the same numbers and files as simulate.py, a user's algorithm
written as the built-ins are, calls that follow one another in one process, Ctrl-C
as a notebook sends it, and bad input as the CLI's one line."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import fedsim
from tests.conftest import ROOT, WALL_CLOCK, computed, sentinel_notes_left

BYO = ROOT / "experiments" / "byo"  # the documented example: my_model.py, my_algorithm.py
USER_ALGORITHM = "my_algorithm:DampedFedAvg"
OPTIONS = {"clients": 3, "batch_size": 32, "model": "my_model:linear", "fraction_evaluate": 0.67}

API_SCRIPT = """
import json, sys
import fedsim
options = json.loads(sys.argv[1])
from my_algorithm import DampedFedAvg  # the class itself, as a notebook would pass it
one = fedsim.run(**options, rounds=2, strategy=DampedFedAvg, name="api")
grid = fedsim.sweep(**options, rounds=2, strategy="{algorithm}", damping=[1.0, 0.5], name="grid")
print(json.dumps({{
    "status": one.status, "config": one.config, "user_code": one.document["user_code"],
    "final_accuracy": float(one.rounds.central_accuracy.iloc[-1]),
    "model": type(one.model).__name__, "summary": grid.to_dict("records"),
}}))
"""

INTERRUPT_SCRIPT = """
import json, os, signal, sys, threading, time
import fedsim
options = json.loads(sys.argv[1])


def interrupted(name, rounds):
    try:
        fedsim.run(**options, rounds=rounds, name=name)
    except KeyboardInterrupt:
        print("caught KeyboardInterrupt in", name, flush=True)
    try:
        time.sleep(1)  # where a second Ctrl-C that came after the call returned lands
    except KeyboardInterrupt:
        pass


def twice(after):  # a Ctrl-C, and another 0.3 s later, sent by a thread of the process
    def send():
        time.sleep(after)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.3)
        os.kill(os.getpid(), signal.SIGINT)
    threading.Thread(target=send, daemon=True).start()


twice(0.6)  # while the call imports torch and flwr, and starts Ray
interrupted("early", 40)
interrupted("stopped", 40)  # the test sends two once round 1 is done
after = fedsim.run(**options, rounds=1, name="after")
print(json.dumps({
    "after": after.status,
    "handler_kept": signal.getsignal(signal.SIGINT) is signal.default_int_handler,
    "threads": sorted(t.name for t in threading.enumerate()),
}), flush=True)
"""


def _python(script: str, options: dict, **kwargs) -> subprocess.Popen:
    """A script of the user's, run from the example's folder (so its modules import)."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), json.dumps(options)],
        cwd=BYO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def test_the_api_runs_users_code_with_the_clis_numbers(tiny_cifar, tmp_path):
    options = {**OPTIONS, "data": str(tiny_cifar), "results_dir": str(tmp_path)}
    temp = Path(tempfile.mkdtemp(prefix="fst", dir="/tmp"))  # short: Ray's sockets are in it
    api = _python(
        API_SCRIPT.format(algorithm=USER_ALGORITHM),
        options,
        env={**os.environ, "TMPDIR": str(temp)},
    )
    out, err = api.communicate(timeout=600)
    assert api.returncode == 0, err[-3000:]
    assert sentinel_notes_left(temp) == []  # two Ray instances, and the exit's own stop
    shutil.rmtree(temp)
    said = json.loads(out.strip().splitlines()[-1])

    # The command line, from the same folder, with fedsim's own FedAvg
    cli = subprocess.run(
        [sys.executable, str(ROOT / "simulate.py"), "--rounds", "2", "--name", "cli"]
        + [f"--{k.replace('_', '-')}={v}" for k, v in options.items()],
        cwd=BYO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert cli.returncode == 0, cli.stderr[-3000:]

    # A user's algorithm written as the built-ins are: at damping 1 it is FedAvg, bit
    # for bit, and a call gives what the command line gives
    for name in WALL_CLOCK:
        assert computed(tmp_path / "api", name).equals(computed(tmp_path / "cli", name)), name
    assert said["status"] == "complete" and said["model"] == "Sequential"
    assert said["config"]["strategy"] == USER_ALGORITHM
    assert said["config"]["strategy_options"] == {"damping": 1.0}
    for option, path in (("model", OPTIONS["model"]), ("strategy", USER_ALGORITHM)):
        file = BYO / f"{path.partition(':')[0]}.py"
        recorded = said["user_code"][option]
        assert recorded["sha256"] == hashlib.sha256(file.read_bytes()).hexdigest(), option

    # A second call in the same process (Ray again), a sweep of the user's own option
    rows = {row["damping"]: row for row in said["summary"]}
    assert set(rows) == {1.0, 0.5} and all(row["status"] == "complete" for row in rows.values())
    assert rows[1.0]["final_accuracy"] == said["final_accuracy"]
    losses = {
        damping: pd.read_csv(tmp_path / "grid" / row["run"] / "rounds.csv").central_loss.tolist()
        for damping, row in rows.items()
    }
    assert losses[1.0] == pd.read_csv(tmp_path / "api" / "rounds.csv").central_loss.tolist()
    assert losses[0.5][1:] != losses[1.0][1:]  # damped updates: another model after round 0


def test_ctrl_c_stops_a_call_and_the_next_one_runs(tiny_cifar, tmp_path):
    """A notebook's interrupts: twice in a row while a call starts (imports, Ray), then
    twice in a row mid-round; each call stops, keeps its rounds, and the next call in
    the same process runs (it used to crash with a segfault or hang the exit: a module
    half-imported, Ray half-stopped, Flower's threads left waiting on a stopped Ray)."""
    options = {**OPTIONS, "data": str(tiny_cifar), "results_dir": str(tmp_path)}
    script = _python(INTERRUPT_SCRIPT, options)
    deadline, seen = time.monotonic() + 300, []
    for line in script.stdout:  # two Ctrl-C once the second call's first round is done
        seen.append(line)
        if re.match(r"round +1/40", line) or time.monotonic() > deadline:
            break
    script.send_signal(signal.SIGINT)
    time.sleep(0.3)
    script.send_signal(signal.SIGINT)
    rest, err = script.communicate(timeout=300)
    out = "".join(seen) + rest
    assert script.returncode == 0, err[-3000:]
    assert "caught KeyboardInterrupt in early" in out
    assert "caught KeyboardInterrupt in stopped" in out
    said = json.loads(out.strip().splitlines()[-1])
    assert said["after"] == "complete" and said["handler_kept"]
    assert not [name for name in said["threads"] if "ThreadPoolExecutor" in name]
    stopped = json.loads((tmp_path / "stopped" / "config.json").read_text())
    assert stopped["status"] == "interrupted"
    assert len(pd.read_csv(tmp_path / "stopped" / "rounds.csv")) >= 2  # round 0 and 1 kept


BAD_MODELS = """
from torch import nn

def seven_classes():
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 7))

NOT_CALLABLE = 3
"""


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"clients": 0}, "--clients: "),
        ({"rounds": [1, 2]}, "--rounds: takes one value in fedsim.run"),
        ({"nonsense": 1}, "--nonsense: is not a fedsim option"),
        ({"model": "no_such_module:f"}, "--model: cannot import 'no_such_module'"),
        ({"model": "{bad}:missing"}, "has no 'missing'"),
        ({"model": "{bad}:NOT_CALLABLE"}, "is not callable"),
        ({"strategy": "{bad}:seven_classes"}, "is not a subclass of fedsim.Algorithm"),
        ({"model": "fedsim.ground.by_value:c0"}, "this machine has no such file"),
    ],
)
def test_bad_options_raise_the_clis_message(options, message, tmp_path, monkeypatch):
    """Refused before anything starts (no Ray, no folder), as ConfigError, never exit.
    (A model that does not fit the data is refused once the data is loaded: the CLI's
    line for it is tested in test_data.py.)"""
    bad = f"bad_models_{abs(hash(str(tmp_path))) % 10**8}"  # a fresh module each test
    (tmp_path / f"{bad}.py").write_text(BAD_MODELS)
    monkeypatch.chdir(tmp_path)
    options = {k: v.format(bad=bad) if isinstance(v, str) else v for k, v in options.items()}
    with pytest.raises(fedsim.ConfigError) as raised:
        fedsim.run(**options, results_dir=str(tmp_path / "results"))
    assert message in str(raised.value)
    assert not (tmp_path / "results").exists()
    if options == {"model": f"{bad}:missing"}:  # the command line says the same
        argv = [sys.executable, str(ROOT / "simulate.py"), "--model", options["model"]]
        done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2
        assert done.stderr == f"error: {raised.value}\n"


USERS_CODE = """
import torch
from torch import nn
from fedsim.algorithms.fedavg import FedAvg
from fedsim import Algorithm

def raises():
    raise RuntimeError("no weights file here")

class Rounding(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3 * 32 * 32, 10)

    def forward(self, x):
        return self.linear(x.flatten(1)).argmax(1, keepdim=True).repeat(1, 10)

class NoServerSide(Algorithm):
    pass

class ServerSideRaises(FedAvg):
    def strategy(self):
        raise KeyError("momentum")

class OldEntry(FedAvg):
    def train(self, ctx):
        raise AssertionError("never called")

class Unsaveable(FedAvg):
    def strategy(self):
        import threading

        made = super().strategy()
        made.guard = threading.Lock()
        return made
"""


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"model": "{mod}:raises"}, "fails to build a model: RuntimeError: no weights file here"),
        (
            {"model": "{mod}:Rounding"},
            "gives torch.int64 for the data's images (3x32x32), expected float",
        ),
        ({"strategy": "{mod}:NoServerSide"}, "has no server side: define strategy()"),
        ({"strategy": "{mod}:ServerSideRaises"}, ".strategy() raises KeyError: 'momentum'"),
        (
            {"strategy": "{mod}:Unsaveable"},
            "cannot be saved in checkpoint.pt (FedAvg.guard: a _thread.lock)",
        ),
        ({"strategy": "{mod}:OldEntry"}, "defines train(), a client entry fedsim no longer"),
    ],
    ids=[
        "factory raises",
        "integer output",
        "no strategy()",
        "strategy() raises",
        "a lock",
        "train()",
    ],
)
def test_the_users_code_is_checked_before_anything_runs(
    options, message, tiny_cifar, tmp_path, monkeypatch
):
    """What fedsim.runner.inputs.prepare refuses, with the data at hand, before Ray's run or a
    folder (fedsim.run and the CLI say it as their ConfigError line)."""
    from fedsim.runner.inputs import prepare
    from fedsim.runner.options import make_config

    module = f"users_code_{abs(hash(str(tmp_path))) % 10**8}"
    (tmp_path / f"{module}.py").write_text(USERS_CODE)
    monkeypatch.chdir(tmp_path)
    options = {k: v.format(mod=module) for k, v in options.items()}
    with pytest.raises(fedsim.ConfigError) as raised:
        prepare(make_config(**options, data=str(tiny_cifar)))
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_the_api_takes_what_is_clearly_meant_and_refuses_the_rest(tmp_path):
    """Options spelled as on the command line and NumPy numbers are taken (the run is
    then refused only for the one bad value); empty lists and no folder are refused."""
    with pytest.raises(fedsim.ConfigError, match=r"^--rounds: got 0, must be ≥ 1$"):
        fedsim.run(**{"fraction-fit": np.float32(0.5), "--clients": np.int64(3)}, rounds=0)
    with pytest.raises(fedsim.ConfigError, match="--fraction-fit: is given twice"):
        fedsim.run(**{"fraction-fit": 0.5, "fraction_fit": 0.5})
    with pytest.raises(fedsim.ConfigError, match="--clients: takes at least one value"):
        fedsim.sweep(clients=[], results_dir=str(tmp_path))
    (tmp_path / "a_file").write_text("")
    for folder, message in [
        (None, "--resume: takes a run folder, got None"),
        (tmp_path / "a_file", "is a file, not a run folder"),
        (tmp_path / "nothing", "does not exist"),
    ]:
        with pytest.raises(fedsim.ConfigError, match=re.escape(message)):
            fedsim.resume(folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_a_users_algorithm_shows_its_options_in_help():
    argv = [sys.executable, str(ROOT / "simulate.py"), "--strategy", USER_ALGORITHM, "--help"]
    done = subprocess.run(argv, cwd=BYO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"--strategy {USER_ALGORITHM}" in done.stdout
    assert "--damping DAMPING" in done.stdout


NOTEBOOK_SCRIPT = """
import json, sys
import fedsim
from torch import nn

# as cells of a notebook define them: in __main__, importable by no other process
def tiny(num_classes, image_shape):
    c, h, w = image_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, num_classes))

from fedsim.algorithms.fedavg import FedAvg

class HalfLr(FedAvg):
    def settings(self):
        import dataclasses
        settings = super().settings()
        return dataclasses.replace(settings, lr=settings.lr / 2)

options = json.loads(sys.argv[1])
result = fedsim.run(model=tiny, strategy=HalfLr, rounds=1, name="notebook", **options)
said = {key: result.config[key] for key in ("model", "strategy")}
said |= {"status": result.status, "user_code": result.document["user_code"]}
print(json.dumps(said))
"""

RESUME_SCRIPT = """
import json, sys
import fedsim
print(fedsim.resume(sys.argv[1], rounds=2).status)
"""


def test_code_defined_in_a_notebook_runs_and_resumes_by_value(tiny_cifar, tmp_path):
    """A factory and an algorithm class defined in __main__ (a notebook's cells) are
    kept by value: the client processes train with them, and a later process that
    defines neither resumes the run with them."""
    options = {"data": str(tiny_cifar), "results_dir": str(tmp_path), "clients": 2}
    notebook = _python(NOTEBOOK_SCRIPT, options)
    out, err = notebook.communicate(timeout=600)
    assert notebook.returncode == 0, err[-3000:]
    said = json.loads(out.strip().splitlines()[-1])
    assert said["status"] == "complete"
    for option in ("model", "strategy"):
        assert said[option].startswith("fedsim.ground.by_value:c"), said[option]
        assert said["user_code"][option]["name"] == said[option]
    first = pd.read_csv(tmp_path / "notebook" / "rounds.csv")
    assert first.central_accuracy.notna().all() and len(first) == 2

    resumed = subprocess.run(
        [sys.executable, "-c", RESUME_SCRIPT, str(tmp_path / "notebook")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.strip().splitlines()[-1] == "complete"
    rounds = pd.read_csv(tmp_path / "notebook" / "rounds.csv")
    assert rounds["round"].tolist() == [0, 1, 2]
    assert rounds.iloc[:2].equals(first)


def test_code_kept_by_value_is_checked_against_its_name_and_written_again(tmp_path):
    """The pickle of notebook code, emptied or garbled in the cache: refused by name
    (never unpickled), and written anew whenever the code itself is passed again."""
    from fedsim.ground import by_value, imports

    def factory(num_classes):  # local to this function: kept by value, as a notebook's
        from torch import nn

        return nn.Linear(4, num_classes)

    name = by_value.keep(factory)
    path = by_value.folder() / f"{name.rpartition(':')[2][len(by_value.PREFIX) :]}.pkl"
    for damage in (b"", path.read_bytes()[:-7] + b"garbage"):
        path.write_bytes(damage)
        by_value.__dict__.pop(name.rpartition(":")[2], None)  # a fresh process's view
        with pytest.raises(fedsim.ConfigError, match="is damaged"):
            imports.load(name, "--model")
        assert by_value.keep(factory) == name  # the code at hand: written again
        assert imports.load(name, "--model")(3).out_features == 3
