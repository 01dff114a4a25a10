"""The simulated clock through the real engine, in one experiment: a deadline, over-
selection and FedBuff on lognormal profiles, and a FedBuff run resumed with the clients
it had in flight."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from fedsim.front.summary import run_folders
from tests.conftest import run_cli

EXPERIMENT = """
clients = 6
rounds = 3
batch-size = 16
lr = 0.05
fraction-evaluate = 0
profiles = "lognormal"
target-accuracy = 0.15

[[variant]]
fraction-fit = 0.67
deadline = 2.5

[[variant]]
fraction-fit = 0.5
over-select = 1.5

[[variant]]
strategy = "fedbuff"
buffer-size = 2
concurrency = 4
rounds = [2, 4]
"""


@pytest.fixture(scope="module")
def runs(tiny_cifar, tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    folder = tmp_path_factory.mktemp("clock")
    toml = folder / "clock.toml"
    toml.write_text(EXPERIMENT)
    done = run_cli(
        "--experiment", str(toml), "--data", str(tiny_cifar), "--results-dir", str(folder)
    )
    assert done.returncode == 0, done.stderr[-3000:]
    named = {}
    for run in run_folders(folder / "clock"):
        cfg = json.loads((run / "config.json").read_text())["config"]
        key = "deadline" if cfg["deadline"] else "over-select" if cfg["over_select"] else ""
        named[key or f"fedbuff-r{cfg['rounds']}"] = run
    return folder / "clock", named


def _csvs(run: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    rounds = pd.read_csv(run / "rounds.csv")
    clients = pd.read_csv(run / "clients.csv")
    return rounds, clients[clients["phase"] == "train"]


def test_a_deadline_discards_exactly_the_clients_not_done_by_it(runs) -> None:
    rounds, clients = _csvs(runs[1]["deadline"])
    late = clients["sim_seconds"] > 2.5
    assert late.any() and (~late).any()
    assert (clients["status"] == late.map({True: "straggler", False: "ok"})).all()
    per_round = clients.groupby("round")
    trained = rounds[rounds["round"] > 0].set_index("round")
    assert trained["stragglers"].equals(per_round["status"].apply(lambda s: (s != "ok").sum()))
    assert (trained["clients_failed"] == 0).all() and (trained["clients_sampled"] == 4).all()
    ends = per_round.apply(lambda c: 2.5 if (c["status"] != "ok").any() else c["sim_seconds"].max())
    pd.testing.assert_series_equal(trained["sim_round_seconds"], ends, check_names=False)
    assert rounds["sim_clock"].tolist() == pytest.approx([0, *ends.cumsum()])


def test_over_selection_keeps_the_first_k_to_finish(runs) -> None:
    rounds, clients = _csvs(runs[1]["over-select"])
    for _, sampled in clients.groupby("round"):
        assert len(sampled) == math.ceil(1.5 * 3)
        fastest = sampled.nsmallest(3, "sim_seconds")
        assert set(sampled.loc[sampled["status"] == "ok", "client"]) == set(fastest["client"])
    trained = rounds[rounds["round"] > 0].set_index("round")
    assert (trained["stragglers"] == 2).all()
    kept = clients[clients["status"] == "ok"].groupby("round")["sim_seconds"].max()
    pd.testing.assert_series_equal(trained["sim_round_seconds"], kept, check_names=False)


def test_fedbuff_rows_are_server_updates_of_k_arrivals(runs) -> None:
    rounds, clients = _csvs(runs[1]["fedbuff-r4"])
    assert rounds["round"].tolist() == [0, 1, 2, 3, 4]
    assert (rounds.loc[1:, "clients_sampled"] == 2).all() and (rounds["stragglers"] == 0).all()
    assert rounds["sim_clock"].is_monotonic_increasing
    assert rounds.loc[1:, "sim_round_seconds"].sum() == pytest.approx(rounds["sim_clock"].iloc[-1])
    assert clients.groupby("round").size().tolist() == [2, 2, 2, 2]


def test_summary_and_plot_on_the_simulated_clock(runs) -> None:
    folder, named = runs
    summary = pd.read_csv(folder / "summary.csv").set_index("run")
    for run in named.values():
        rounds = pd.read_csv(run / "rounds.csv")
        reached = rounds.loc[rounds["central_accuracy"] >= 0.15, "sim_clock"]
        found = summary.loc[run.name, "sim_seconds_to_target"]
        assert found == pytest.approx(reached.iloc[0], rel=1e-5) if len(reached) else pd.isna(found)
    assert summary.loc[named["deadline"].name, "stragglers"] > 0
    assert (folder / "accuracy_vs_sim_hours.png").stat().st_size > 10_000


def test_resumed_fedbuff_goes_on_with_the_same_clock_and_numbers(runs) -> None:
    short, whole = runs[1]["fedbuff-r2"], runs[1]["fedbuff-r4"]
    resumed = run_cli("--resume", str(short), "--rounds", "4")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for csv, timing in (("rounds.csv", "round_seconds"), ("clients.csv", "seconds")):
        pd.testing.assert_frame_equal(
            pd.read_csv(short / csv).drop(columns=timing),
            pd.read_csv(whole / csv).drop(columns=timing),
        )
