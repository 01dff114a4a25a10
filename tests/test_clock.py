"""The simulated clock without the engine: profiles, the clock's arithmetic by hand,
how a round ends, FedBuff's schedule and its staleness-weighted update."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict

from fedsim import algorithms
from fedsim.algorithms.context import ClientContext
from fedsim.algorithms.fedbuff import FedBuffStrategy
from fedsim.front import sweep
from fedsim.front.cli import main
from fedsim.front.summary import sim_seconds_to_target
from fedsim.ground import messages
from fedsim.ground.config import RunConfig
from fedsim.ground.streams import sample as sample_from
from fedsim.learning import models
from fedsim.learning.tasks import CIFAR10
from fedsim.learning.trainers import OneAtATime
from fedsim.outputs.records import ClientRecord
from fedsim.runner.options import make_config
from fedsim.simulation.buffered import BufferedSchedule
from fedsim.simulation.clock import ClockState, Flight, round_end, time_clients
from fedsim.simulation.phase import PhaseResult, Population
from fedsim.simulation.profiles import (
    MEDIAN_DOWN_MBPS,
    MEDIAN_UP_MBPS,
    Profiles,
    load_profiles,
    read_profiles_csv,
)
from fedsim.simulation.sampling import sample_clients
from fedsim.simulation.state import RunState
from tests.conftest import ROOT

HEADER = "client,examples_per_second,down_mbps,up_mbps,online\n"


pytestmark = pytest.mark.usefixtures("in_a_run")  # Flower builds messages in a run


def _profiles(tmp_path, rows: str, clients: int = 3) -> Profiles:
    path = tmp_path / "profiles.csv"
    path.write_text(HEADER + rows)
    return read_profiles_csv(str(path), clients)


def _train(pid: int, status: str = "ok", examples: int = 200, up: int = 500_000) -> ClientRecord:
    return ClientRecord(1, "train", pid, examples, 1.0, None, status, 0.1, 1_000_000, up)


# ---- the clock, by hand ----------------------------------------------------------------


def test_three_clients_by_hand(tmp_path) -> None:
    """1 MB down, 200 examples × 2 epochs, 0.5 MB up (client 2 failed: nothing up)."""
    profiles = _profiles(tmp_path, "0,100,8,4,\n1,50,16,8,\n")  # client 2 is not listed
    records = [_train(0), _train(1), _train(2, "failed", up=0)]
    finish = time_clients(profiles, records, make_config(local_epochs=2))
    # 8e6 bits / 8 Mbit/s = 1 s; 400 examples / 100 per s = 4 s; 4e6 bits / 4 Mbit/s = 1 s
    assert records[0].sim_seconds == pytest.approx(1 + 4 + 1)
    # 8e6 / 16e6 = 0.5 s; 400 / 50 = 8 s; 4e6 / 8e6 = 0.5 s
    assert records[1].sim_seconds == pytest.approx(0.5 + 8 + 0.5)
    # the median device: 13.6 ms per example (FedScale), 55.07 / 12.61 Mbit/s (Ookla)
    assert records[2].sim_seconds == pytest.approx(8 / 55.07 + 400 * 0.005 * math.e)
    assert finish == {0: records[0].sim_seconds, 1: records[1].sim_seconds}  # arrivals only
    assert round_end(finish) == (pytest.approx(9.0), set())  # waits for the slowest


def test_round_end_drops_exactly_the_slow_ones() -> None:
    finish = {0: 6.0, 1: 9.0, 2: 5.9, 3: 7.5}
    assert round_end(finish, deadline=7.0) == (7.0, {1, 3})
    assert round_end(finish, deadline=9.0) == (9.0, set())  # nobody late: ends with the last
    assert round_end(finish, keep=2) == (6.0, {1, 3})  # the first two to finish
    assert round_end(finish, keep=3, deadline=7.0) == (7.0, {1, 3})  # goal missed: deadline
    assert round_end(finish, keep=1, deadline=7.0) == (5.9, {0, 1, 3})
    assert round_end({0: 2.0, 1: 2.0}, keep=1) == (2.0, {1})  # a tie: the lower id
    assert round_end({}, deadline=7.0) == (0.0, set())  # every client failed


def test_stragglers_are_taken_from_the_exchange() -> None:
    records = [_train(0), _train(1, "failed"), _train(2), _train(3)]
    replies = [
        Message(RecordDict(), dst_node_id=pid + 1, message_type="train") for pid in (0, 2, 3)
    ]
    exchange = PhaseResult(replies=list(replies), clients=records, states={2: RecordDict()})
    exchange.discard({2})
    assert exchange.replies == [replies[0], replies[2]]
    assert [c.status for c in records] == ["ok", "failed", "straggler", "ok"]
    assert exchange.states == {}


# ---- profiles --------------------------------------------------------------------------


def test_profiles_file_availability_and_defaults(tmp_path) -> None:
    profiles = _profiles(tmp_path, "0,100,8,4,0-10;20-inf\n1,50,16,8,5-15\n\n")
    assert profiles.of(2) == (pytest.approx(73.576, abs=1e-3), MEDIAN_DOWN_MBPS, MEDIAN_UP_MBPS)
    assert profiles.online_at(0) == [0, 2] and profiles.online_at(12) == [1, 2]
    assert profiles.online_at(10) == [1, 2] and profiles.online_at(1e9) == [0, 2]
    assert profiles.next_online(12) == 12  # client 2 is always online
    nobody = _profiles(tmp_path, "0,1,1,1,0-10\n1,1,1,1,30-40;15-20\n", clients=2)
    assert [nobody.next_online(t) for t in (5, 10, 17, 20, 40)] == [5, 15, 17, 30, None]


def test_a_profiles_file_saved_by_excel_is_read(tmp_path) -> None:
    """Excel's "CSV UTF-8" starts the file with a byte-order mark."""
    path = tmp_path / "excel.csv"
    path.write_text("\ufeff" + HEADER + "1,100,8,4,\n", encoding="utf-8")
    assert read_profiles_csv(str(path), 2).of(1) == (100, 8, 4)


def test_lognormal_profiles_are_seeded_and_centred_on_the_medians() -> None:
    cfg = RunConfig(clients=2000, profiles="lognormal")
    first, again = load_profiles(cfg), load_profiles(cfg)
    assert np.array_equal(first.examples_per_second, again.examples_per_second)
    other = load_profiles(cfg.replace(seed=1))
    assert not np.array_equal(first.down_mbps, other.down_mbps)
    assert np.median(first.down_mbps) == pytest.approx(MEDIAN_DOWN_MBPS, rel=0.1)
    assert np.median(first.up_mbps) == pytest.approx(MEDIAN_UP_MBPS, rel=0.1)
    assert np.std(np.log(first.examples_per_second)) == pytest.approx(0.6, rel=0.1)
    assert first.online_at(0) == list(range(2000))


BAD_FILES = [
    ("client,examples_per_second,down_mbps\n0,1,1\n", "line 1: missing column(s) up_mbps, online"),
    (HEADER.replace("\n", ",x\n") + "0,1,1,1,,\n", "line 1: unknown column 'x'"),
    (HEADER + "0,-5,1,1,\n", "line 2: examples_per_second must be a positive number, got '-5'"),
    (HEADER + "0,1,0,1,\n", "line 2: down_mbps must be a positive number, got '0'"),
    (HEADER + "0,1,1,fast,\n", "line 2: up_mbps must be a positive number, got 'fast'"),
    (HEADER + "0,1,1,1,\n3,1,1,1,\n", "line 3: client 3 is not one of the run's 3 (0 to 2)"),
    (HEADER + "one,1,1,1,\n", "line 2: client 'one' is not a partition id"),
    (HEADER + "0,1,1,1,\n0,2,2,2,\n", "line 3: client 0 is listed twice (first on line 2)"),
    (HEADER + "0,1,1,1,10-5\n", "line 2: online '10-5' is not start-end intervals"),
    (HEADER + "0,1,1,1,0-5;x\n", "line 2: online '0-5;x' is not start-end intervals"),
    (HEADER + "0,1,1\n", "line 2: 3 cells, the header has 5"),
    (HEADER + "0,1e-320,1,1,\n", "line 2: examples_per_second must be at least 1e-09"),
    (HEADER.replace("online", "online,up_mbps") + "0,1,1,1,,2\n", "'up_mbps' appears twice"),
    ("", "is empty; the first line must name the columns"),
]


@pytest.mark.parametrize(("text", "message"), BAD_FILES, ids=[m for _, m in BAD_FILES])
def test_bad_profiles_file_is_one_line_and_exit_2(text, message, tmp_path, capsys) -> None:
    path = tmp_path / "profiles.csv"
    path.write_text(text)
    results = tmp_path / "results"
    code = main(["--clients", "3", "--profiles", str(path), "--results-dir", str(results)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"error: --profiles: {path}") and message in lines[0], lines[0]
    assert not results.exists()


def test_missing_profiles_file(tmp_path, capsys) -> None:
    assert main(["--profiles", str(tmp_path / "nope.csv")]) == 2
    assert "nope.csv: cannot be read" in capsys.readouterr().err


# ---- sampling ----------------------------------------------------------------------------


def test_sampling_among_everyone_is_the_old_sampler_and_offline_clients_are_never_drawn():
    def old(seed: int, server_round: int, clients: int, count: int) -> list[int]:
        rng = np.random.default_rng([seed, server_round, 0])
        return sorted(rng.choice(clients, size=count, replace=False).tolist())

    for seed, server_round in [(0, 1), (7, 3), (123, 40)]:
        assert sample_clients(seed, server_round, 50, 0.2, 0) == old(seed, server_round, 50, 10)
    online = [1, 4, 5, 8, 9, 13]
    picked = sample_from(0, 1, online, 3, 0)
    assert len(picked) == 3 and set(picked) <= set(online)
    assert sample_from(0, 1, online, 10, 0) == online


# ---- FedBuff -----------------------------------------------------------------------------


def _reply(delta: list[float], staleness: int, loss: float, examples: int) -> Message:
    content = RecordDict(
        {
            "arrays": ArrayRecord([np.array(delta, dtype=np.float32)]),
            "metrics": MetricRecord({"train_loss": loss, "num-examples": examples}),
            messages.STALENESS: ConfigRecord({messages.STALENESS: staleness}),
        }
    )
    return Message(content, dst_node_id=1, message_type=MessageType.TRAIN)


def test_fedbuff_weighs_updates_by_staleness_as_written_by_hand() -> None:
    strategy = FedBuffStrategy(server_lr=0.5)
    strategy.current_arrays = ArrayRecord([np.array([1.0, 2.0, 3.0], dtype=np.float32)])
    replies = [
        _reply([0.4, -0.2, 1.0], staleness=0, loss=1.0, examples=10),  # weight 1/√1 = 1
        _reply([0.8, 0.4, -2.0], staleness=3, loss=3.0, examples=30),  # weight 1/√4 = ½
        _reply([0.3, 0.3, 0.3], staleness=8, loss=2.0, examples=10),  # weight 1/√9 = ⅓
    ]
    arrays, metrics = strategy.aggregate_train(1, replies)
    # w − η/K · Σ s(τ)·Δ, η = 0.5, K = 3
    reference = [
        1.0 - 0.5 / 3 * (0.4 + 0.8 / 2 + 0.3 / 3),
        2.0 - 0.5 / 3 * (-0.2 + 0.4 / 2 + 0.3 / 3),
        3.0 - 0.5 / 3 * (1.0 - 2.0 / 2 + 0.3 / 3),
    ]
    (result,) = arrays.to_numpy_ndarrays()
    assert result.dtype == np.float32
    np.testing.assert_allclose(result, reference, rtol=1e-6)
    assert metrics["train_loss"] == pytest.approx((10 * 1.0 + 30 * 3.0 + 10 * 2.0) / 50)
    assert strategy.current_arrays is arrays  # the next update applies to this model


def test_fedbuff_clients_send_the_change_they_made() -> None:
    cfg = make_config(strategy="fedbuff", batch_size=4)
    model = models.build_model("cnn", seed=0)
    start = ArrayRecord(model.state_dict())
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    ctx = ClientContext(
        cfg=cfg,
        pid=0,
        server_round=1,
        content=RecordDict({messages.ARRAYS: start, messages.CONFIG: ConfigRecord()}),
        state=RecordDict(),
        load_model=lambda arrays: model,  # it holds `start`, and is trained in place
        load_data=lambda split: (images, torch.arange(8) % 10),
    )
    (trained,) = algorithms.build(cfg).train_group([ctx], OneAtATime(model, CIFAR10))
    sent = trained.made.content[messages.ARRAYS].to_torch_state_dict()
    before, after = start.to_torch_state_dict(), model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    for name, delta in sent.items():
        assert torch.equal(delta, before[name] - after[name]), name


class _Exchanges:
    """The training phase BufferedSchedule is handed: training costs `seconds` per
    client (no bytes), and each exchange says which model version it trained on."""

    def __init__(self, seconds: list[float], buffer_size: int, concurrency: int) -> None:
        cfg = make_config(
            clients=len(seconds),
            strategy="fedbuff",
            buffer_size=buffer_size,
            concurrency=concurrency,
            max_failed_rounds=1,
        )
        ones = np.ones(len(seconds))
        profiles = Profiles(1 / np.array(seconds), ones, ones)
        population = Population(np.ones(len(seconds), dtype=int), ones, profiles)
        buffered = algorithms.build(cfg).buffered()
        self.schedule = BufferedSchedule(buffered, cfg, population)
        self.state = RunState(ArrayRecord(), FedBuffStrategy())
        self.version = 0
        self.exchanges: list[tuple[int, list[int]]] = []

    def train(self, server_round: int, pids: list[int]) -> PhaseResult:
        self.exchanges.append((self.version, pids))
        records = [
            ClientRecord(server_round, "train", pid, 1, 1.0, None, "ok", 0.0, 0, 0) for pid in pids
        ]
        replies = [Message(RecordDict(), dst_node_id=pid + 1, message_type="train") for pid in pids]
        return PhaseResult(replies=replies, clients=records)

    def updates(self, count: int) -> list[tuple[float, list[int], list[int]]]:
        """(clock, clients, staleness) of `count` server updates."""
        done = []
        for server_round in range(1, count + 1):
            arrived = self.schedule.train(server_round, self.state, self.train)
            staleness = [r.content[messages.STALENESS][messages.STALENESS] for r in arrived.replies]
            clock = self.state.clock.now
            done.append((clock, [c.client for c in arrived.clients], staleness))
            self.version += 1  # the server applies the update
        return done


def test_fedbuff_schedule_by_hand() -> None:
    """Three clients always training (concurrency 3), one update per arrival: clients
    of 2, 3 and 5 simulated seconds start over as soon as they arrive."""
    loop = _Exchanges([2.0, 3.0, 5.0], buffer_size=1, concurrency=3)
    assert loop.updates(6) == [
        (2.0, [0], [0]),  # client 0 started at 0 on version 0
        (3.0, [1], [1]),  # client 1 started at 0; one update since
        (4.0, [0], [1]),  # client 0 restarted at 2 on version 1
        (5.0, [2], [3]),  # client 2 started at 0 on version 0
        (6.0, [0], [1]),  # client 0 restarted at 4 on version 3; ties go to the lower id
        (6.0, [1], [3]),  # client 1 restarted at 3 on version 2
    ]
    # each restart trained on the model of its start, once the clock had to know
    assert loop.exchanges == [(0, [0, 1, 2]), (1, [0]), (2, [1]), (3, [0]), (4, [2]), (5, [0])]


def test_fedbuff_trains_a_start_early_when_it_could_arrive_first() -> None:
    loop = _Exchanges([1.0, 3.0, 5.0], buffer_size=3, concurrency=3)
    assert loop.updates(1) == [(3.0, [0, 0, 0], [0, 0, 0])]  # 1, 2, then 3 (before client 1)
    assert loop.exchanges == [(0, [0, 1, 2]), (0, [0]), (0, [0])]


def test_clock_state_survives_the_checkpoint() -> None:
    record = ClientRecord(4, "train", 3, 10, 1.5, None, "ok", 0.2, 100, 50, sim_seconds=7.5)
    content = RecordDict({"arrays": ArrayRecord([np.arange(3, dtype=np.float32)])})
    clock = ClockState(
        now=12.5, draws=4, batches=3, in_flight=[Flight(3, 2, 20.0, record, content)]
    )
    again = ClockState.from_dict(clock.to_dict())
    assert (again.now, again.draws, again.batches) == (12.5, 4, 3)
    (flight,) = again.in_flight
    assert (flight.pid, flight.version, flight.finish, flight.record) == (3, 2, 20.0, record)
    np.testing.assert_array_equal(
        flight.content["arrays"].to_numpy_ndarrays()[0], np.arange(3, dtype=np.float32)
    )
    assert flight.state is None


def test_time_to_target_is_the_first_row_that_reaches_it() -> None:
    frame = pd.DataFrame({"central_accuracy": [0.1, 0.4, 0.6, 0.5], "sim_clock": [0, 10, 25, 40]})
    assert sim_seconds_to_target(frame, 0.5) == 25
    assert sim_seconds_to_target(frame, 0.7) is None
    assert sim_seconds_to_target(frame, None) is None
    assert sim_seconds_to_target(frame.drop(columns="sim_clock"), 0.5) is None


def test_the_stragglers_experiment_compares_the_four_ways_to_end_a_round() -> None:
    experiment = sweep.plan_from(str(ROOT / "experiments" / "stragglers.toml"), {})
    ways = {(c.strategy, c.deadline, c.over_select) for c in experiment.runs}
    assert ways == {("fedavg", None, None), ("fedavg", 20.0, None), ("fedavg", None, 1.3)} | {
        ("fedbuff", None, None)
    }
    assert {
        (c.clients, c.partition, c.alpha, c.profiles, c.local_epochs, c.fraction_fit)
        for c in experiment.runs
    } == {(50, "dirichlet", 0.5, "lognormal", 1, 0.2)}
