"""Experiments: grids from comma lists and TOML files, resume-skip, summary and plots."""

from __future__ import annotations

import itertools
import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from experiments.per_class_accuracy import per_class
from fedsim.flower.actor_log import ENV as ACTOR_LOG
from fedsim.front import cli, sweep
from fedsim.front.cli import main
from fedsim.front.plots import PLOTS
from tests.conftest import ROOT, run_cli


def _plan(*argv: str, experiment: str | None = None) -> sweep.Experiment | None:
    return sweep.plan_from(experiment, cli.given_options(cli.build_parser(argv).parse_args(argv)))


# --- grids ------------------------------------------------------------------------------


def test_comma_lists_expand_into_every_combination_with_stable_names() -> None:
    experiment = _plan("--clients", "2,4", "--seed", "0,1", "--strategy", "fedavg,fedprox")
    assert experiment.folder == Path("results/sweep_clients-2-4_strategy-fedavg-fedprox_seed-0-1")
    combos = {(c.clients, c.strategy, c.seed) for c in experiment.runs}
    strategies = ("fedavg", "fedprox")
    assert combos == {(n, s, seed) for n in (2, 4) for s in strategies for seed in (0, 1)}
    assert len(experiment.runs) == 8
    names = [c.name for c in experiment.runs]
    assert "clients-4_fedprox_seed-1" in names and len(set(names)) == 8
    assert {c.results_dir for c in experiment.runs} == {str(experiment.folder)}
    assert _plan("--clients", "2") is None  # one value everywhere: a plain run


def test_a_setting_that_does_not_apply_does_not_make_a_second_run() -> None:
    experiment = _plan("--partition", "iid,dirichlet", "--alpha", "0.1,1")
    assert [c.name for c in experiment.runs] == [
        "iid_seed-0",
        "dirichlet_alpha-0.1_seed-0",
        "dirichlet_alpha-1.0_seed-0",
    ]


def _toml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "exp.toml"
    path.write_text(text)
    return str(path)


def test_toml_grid_with_flower_spellings_variants_and_command_line_overrides(tmp_path) -> None:
    path = _toml(
        tmp_path,
        """
        num-server-rounds = 4
        local-epochs = 2
        fraction-fit = 0.5
        clients = [2, 8]
        seeds = [0, 1]
        augment = true
        [[variant]]
        partition = "iid"
        [[variant]]
        partition = "pathological"
        classes_per_client = [1, 3]
        """,
    )
    experiment = _plan(experiment=path)
    assert experiment.folder == Path("results/exp")
    assert len(experiment.runs) == 2 * 2 * 3
    settings = {(c.rounds, c.local_epochs, c.fraction_fit, c.augment) for c in experiment.runs}
    assert settings == {(4, 2, 0.5, True)}
    assert {c.name for c in experiment.runs if c.clients == 8 and c.seed == 1} == {
        "clients-8_iid_seed-1",
        "clients-8_pathological_classes-per-client-1_seed-1",
        "clients-8_pathological_classes-per-client-3_seed-1",
    }
    # The command line wins, and narrowing the grid keeps the full grid's run names.
    narrowed = _plan(
        "--partition", "iid", "--rounds", "2", "--no-augment", "--name", "quick", experiment=path
    )
    assert narrowed.folder == Path("results/quick")
    assert [c.name for c in narrowed.runs] == [
        "clients-2_iid_seed-0",
        "clients-2_iid_seed-1",
        "clients-8_iid_seed-0",
        "clients-8_iid_seed-1",
    ]
    assert {(c.rounds, c.augment) for c in narrowed.runs} == {(2, False)}


def test_shipped_experiments_hold_the_issue_grids() -> None:
    scaling = _plan(experiment=str(ROOT / "experiments" / "client_scaling.toml"))
    assert sorted({c.clients for c in scaling.runs}) == [2, 4, 8, 16, 32, 64]
    assert {(c.partition, c.alpha) for c in scaling.runs} == {("iid", 0.5), ("dirichlet", 0.5)}
    assert {c.seed for c in scaling.runs} == {0, 1, 2}
    niid = _plan(experiment=str(ROOT / "experiments" / "niid_bench_cifar10.toml"))
    assert len(niid.runs) == 20  # 5 partitions x FedAvg, FedProx, SCAFFOLD, FedNova
    assert {
        (c.clients, c.fraction_fit, c.rounds, c.local_epochs, c.batch_size, c.lr, c.momentum)
        for c in niid.runs
    } == {(10, 1.0, 50, 10, 64, 0.01, 0.9)}
    assert all(c.weight_decay == 1e-5 and c.augment and c.model == "cnn" for c in niid.runs)
    splits = {(c.partition, c.alpha, c.classes_per_client) for c in niid.runs}
    assert ("dirichlet", 0.5, 2) in splits
    assert {c.classes_per_client for c in niid.runs if c.partition == "pathological"} == {1, 2, 3}
    assert {
        (c.strategy, c.partition, c.strategy_options["proximal_mu"])
        for c in niid.runs
        if c.strategy == "fedprox"
    } == {
        ("fedprox", "iid", 0.01),
        ("fedprox", "dirichlet", 0.001),  # NIID-Bench's mu for each partition
        ("fedprox", "pathological", 0.01),
    }
    dirichlet = [c for c in niid.runs if c.partition == "dirichlet"]
    assert all(c.dirichlet_balance and c.min_partition_size == 10 for c in dirichlet)
    assert {"fedavg_dirichlet_seed-0", "scaffold_pathological_classes-per-client-2_seed-0"} <= {
        c.name for c in niid.runs
    }
    robustness = _plan(experiment=str(ROOT / "experiments" / "robustness.toml"))
    assert len(robustness.runs) == 12
    assert {(c.strategy, c.byzantine_fraction) for c in robustness.runs} == {
        (s, f) for s in ("fedavg", "fedmedian", "fedtrimmedavg", "krum") for f in (0, 0.1, 0.3)
    }
    assert {(c.partition, c.alpha, c.clients, c.attack) for c in robustness.runs} == {
        ("dirichlet", 0.5, 20, "sign-flip")
    }
    fedrep = _plan(experiment=str(ROOT / "experiments" / "fedrep_cifar10.toml"))
    assert len(fedrep.runs) == 16  # 8 columns x 2 and 5 classes per client
    cells = {(c.strategy, c.classes_per_client, c.local_epochs) for c in fedrep.runs}
    assert ("fedrep", 2, 1) in cells and ("fedrep", 5, 5) in cells and ("fedavg", 5, 1) in cells
    assert {
        (c.clients, c.fraction_fit, c.rounds, c.batch_size, c.lr, c.momentum, c.model)
        for c in fedrep.runs
    } == {(100, 0.1, 100, 10, 0.01, 0.5, "fedrep-cnn")}
    assert {c.strategy_options["head_epochs"] for c in fedrep.runs if c.strategy == "fedrep"} == {
        10
    }


def test_one_cell_of_a_grid_keeps_its_variants_settings() -> None:
    """`--partition dirichlet` picks the Dirichlet variant with what it pairs with it
    (NIID-Bench's balancing and FedProx mu), not a Dirichlet run with the defaults."""
    toml = str(ROOT / "experiments" / "niid_bench_cifar10.toml")
    (cell,) = _plan("--partition", "dirichlet", "--strategy", "fedavg", experiment=toml).runs
    assert (cell.name, cell.alpha, cell.dirichlet_balance, cell.min_partition_size) == (
        "fedavg_dirichlet_seed-0",
        0.5,
        True,
        10,
    )
    prox = _plan("--partition", "dirichlet", "--strategy", "fedprox", experiment=toml).runs
    assert [c.strategy_options["proximal_mu"] for c in prox] == [0.001]
    two = _plan("--partition", "pathological", "--classes-per-client", "2", experiment=toml)
    assert {(c.partition, c.classes_per_client) for c in two.runs} == {("pathological", 2)}
    assert len(two.runs) == 4  # the four strategies
    # a value no variant holds overrides them all
    mu = _plan("--proximal-mu", "0.5", "--strategy", "fedprox", experiment=toml).runs
    assert len(mu) == 5 and {c.strategy_options["proximal_mu"] for c in mu} == {0.5}
    # so does a list with such a value: seeds 0 and 1 of a cell the file runs with seed 0
    seeds = _plan("--seed", "0,1", "--partition", "iid", "--strategy", "scaffold", experiment=toml)
    assert [c.name for c in seeds.runs] == ["scaffold_iid_seed-0", "scaffold_iid_seed-1"]


TOML_ERRORS = [
    ("clinets = 4", "unknown key 'clinets', did you mean 'clients'?"),
    ('rounds = "five"', "rounds = 'five' has the wrong type, must be an integer"),
    ("augment = 1", "augment = 1 has the wrong type, must be true or false"),
    ("rounds = 0", "rounds = 0: --rounds: got 0, must be ≥ 1"),
    ("clients = []", "clients is an empty list"),
    ('strategy = ["fedavg", "fedsgd"]', "--strategy: unknown value 'fedsgd'"),
    ('data = ["a", "b"]', "data takes one value, not a list"),
    ("rounds = 2\nnum-server-rounds = 3", "'num-server-rounds' and 'rounds' set the same option"),
    ("[[variant]]\nname = 'x'", "name cannot vary by [[variant]]"),
    ("variant = 3", "'variant' must be [[variant]] tables"),
    ("rounds = = 3", "is not valid TOML"),
]


@pytest.mark.parametrize(("text", "message"), TOML_ERRORS, ids=[t for t, _ in TOML_ERRORS])
def test_toml_errors_are_one_line_exit_2_and_create_nothing(text, message, tmp_path, capsys):
    results = tmp_path / "results"
    code = main(["--experiment", _toml(tmp_path, text), "--results-dir", str(results)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: --experiment: ") and message in lines[0], lines[0]
    assert not results.exists()


def test_missing_experiment_file_and_empty_plot_folder(tmp_path, capsys) -> None:
    assert main(["--experiment", str(tmp_path / "nope.toml")]) == 2
    assert "nope.toml does not exist" in capsys.readouterr().err
    assert main(["--plot", str(tmp_path)]) == 2
    assert "holds no run folders" in capsys.readouterr().err
    assert main(["--plot", str(tmp_path), "--clients", "3"]) == 2
    assert "--plot: takes the experiment folder alone" in capsys.readouterr().err


# --- a real sweep through the engine ----------------------------------------------------

SWEEP = ["--clients", "2,4", "--rounds", "2", "--fraction-fit", "0.5", "--batch-size", "16"]
METRICS = ["round", "train_loss", "central_loss", "central_accuracy", "clients_sampled"]


@pytest.fixture(scope="module")
def swept(tiny_cifar, tmp_path_factory) -> tuple[list[str], Path]:
    results = tmp_path_factory.mktemp("sweep")
    args = [*SWEEP, "--lr", "0.05", "--data", str(tiny_cifar), "--results-dir", str(results)]
    (results / "actor-log").mkdir()
    done = run_cli(*args, env={**os.environ, ACTOR_LOG: str(results / "actor-log")})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "fedsim: run 2 of 2: clients-4_seed-0" in done.stdout
    return args, results / "sweep_clients-2-4"


def test_sweep_writes_run_folders_summary_and_plots(swept) -> None:
    _, folder = swept
    summary = pd.read_csv(folder / "summary.csv")
    assert summary["run"].tolist() == ["clients-2_seed-0", "clients-4_seed-0"]
    assert summary["clients"].tolist() == [2, 4] and summary["complete"].all()
    assert (summary["rounds_done"] == 2).all() and (summary["clients_failed"] == 0).all()
    assert (summary["seconds_per_round"] > 0).all() and (summary["total_seconds"] > 0).all()
    assert "final_personal_accuracy" not in summary  # no personal run: no such column
    for run in summary["run"]:
        rounds = pd.read_csv(folder / run / "rounds.csv")
        assert summary.set_index("run").loc[run, "final_accuracy"] == pytest.approx(
            rounds["central_accuracy"].iloc[-1]
        )
        counts = pd.read_csv(folder / run / "label_counts.csv", index_col="client")
        assert counts.to_numpy().sum() == 1000 and counts.shape[1] == 10
    # fraction 0.5: one of two clients, two of four, every round
    frame = pd.read_csv(folder / "clients-4_seed-0" / "rounds.csv")
    assert frame["clients_sampled"].tolist() == [0, 2, 2]
    for plot in PLOTS:
        assert (folder / plot).stat().st_size > 10_000, plot


def test_the_runs_of_an_experiment_share_their_actors(swept) -> None:
    """A finished run's actors serve the next run (fedsim.flower.engine's shelf): no more
    processes ran calls than one run has actors. The next test reruns the second run
    in a fresh process and gets the same numbers."""
    _, folder = swept
    calls = sorted(
        (
            json.loads(line)
            for log in (folder.parent / "actor-log").iterdir()
            for line in log.read_text().splitlines()
        ),
        key=lambda call: call["start"],
    )
    rounds = [call["round"] for call in calls]
    assert sum(later < earlier for earlier, later in itertools.pairwise(rounds)) == 1  # two runs
    config = json.loads((folder / "clients-4_seed-0" / "config.json").read_text())
    assert len({call["pid"] for call in calls}) <= config["cluster"]["concurrent_clients"]


def test_per_class_accuracy_adds_up_to_the_runs_central_accuracy(swept) -> None:
    _, folder = swept
    run = folder / "clients-2_seed-0"
    overall, frame = per_class(run)
    final = pd.read_csv(run / "rounds.csv")["central_accuracy"].iloc[-1]
    assert overall == pytest.approx(100 * final, abs=0.11)  # a test image at most (1,000)
    assert frame.loc["holders"].tolist() == [2] * 10  # IID: both clients hold every class
    assert frame.loc["accuracy"].between(0, 100).all()


def test_rerun_skips_complete_runs_and_redoes_unfinished_ones_identically(swept) -> None:
    args, folder = swept
    unfinished = folder / "clients-4_seed-0"
    before = pd.read_csv(unfinished / "rounds.csv")[METRICS]
    kept = (folder / "clients-2_seed-0" / "rounds.csv").stat().st_mtime_ns

    again = run_cli(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("is complete, skipped") == 2 and "Ray has" not in again.stdout

    # A crash in round 2 before any checkpoint: rounds.csv stops at round 1.
    (unfinished / "checkpoint.pt").unlink()
    (unfinished / "rounds.csv").write_text(
        "".join((unfinished / "rounds.csv").read_text().splitlines(keepends=True)[:3])
    )
    third = run_cli(*args)
    assert third.returncode == 0, third.stderr[-3000:]
    assert "run 1 of 2: clients-2_seed-0 is complete, skipped" in third.stdout
    assert "run 2 of 2: clients-4_seed-0 (unfinished, going on)" in third.stdout
    # a new process samples the same clients and computes the same numbers
    assert pd.read_csv(unfinished / "rounds.csv")[METRICS].equals(before)
    assert (folder / "clients-2_seed-0" / "rounds.csv").stat().st_mtime_ns == kept


def test_a_finished_run_with_other_settings_is_not_overwritten(swept) -> None:
    args, folder = swept
    done = run_cli(*args, "--rounds", "3")
    assert done.returncode == 2
    assert "holds a run with other settings (rounds 2 there, 3 here)" in done.stderr
    assert (
        json.loads((folder / "clients-2_seed-0" / "config.json").read_text())["config"]["rounds"]
        == 2
    )


def test_plot_redraws_from_the_csvs(swept) -> None:
    _, folder = swept
    for plot in PLOTS:
        (folder / plot).unlink()
    (folder / "summary.csv").unlink()
    done = run_cli("--plot", str(folder), timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Ray has" not in done.stdout
    assert len(pd.read_csv(folder / "summary.csv")) == 2
    assert all((folder / plot).exists() for plot in PLOTS)


def test_plot_of_runs_without_rounds_refuses_before_writing(swept, tmp_path, capsys) -> None:
    """An experiment whose runs' rounds.csv hold no row (killed before round 0 was
    written): one line, and no summary.csv or plot is written, none half-drawn."""
    _, folder = swept
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns("*.png", "summary.csv"))
    for rounds in copy.glob("*/rounds.csv"):
        rounds.write_text(rounds.read_text().splitlines()[0] + "\n")  # the header alone
    assert main(["--plot", str(copy)]) == 2
    assert "has a round in its rounds.csv: nothing to plot" in capsys.readouterr().err
    assert not list(copy.glob("*.png")) and not (copy / "summary.csv").exists()
