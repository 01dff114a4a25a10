"""The round loop knows an exchange, not the engine: run on an exchange that runs the
clients in the test's own process (no Flower engine, no Ray), it writes the numbers a
run through the engine writes, row for row."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from flwr.app import MessageType

from fedsim.flower import client_app
from fedsim.flower.bundles import BundleInfo
from fedsim.front.flower_app import LocalData
from fedsim.ground.config import RunConfig
from fedsim.ground.messages import ClientOutcome, ClientTask
from fedsim.runner import folders
from fedsim.runner.assembly import Seams, assemble
from fedsim.runner.inputs import prepare
from fedsim.runner.options import make_config
from tests.conftest import WALL_CLOCK, computed, simulate

OPTIONS = "--clients 3 --rounds 2 --batch-size 16 --fraction-fit 0.67 --strategy scaffold"


pytestmark = pytest.mark.usefixtures("in_a_run")  # Flower builds messages in a run


class InProcessExchange:
    """Each task run by fedsim's own client code, here, one client after another, with
    one torch thread as each actor has (--cpus-per-client 1)."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.phases: list[tuple[str, int, list[int]]] = []

    def send(
        self, phase: str, server_round: int, tasks: list[ClientTask]
    ) -> Callable[[], dict[int, ClientOutcome]]:
        self.phases.append((phase, server_round, [task.pid for task in tasks]))

        def outcomes() -> dict[int, ClientOutcome]:  # the clients run when waited for
            threads = torch.get_num_threads()
            try:
                process = client_app.process_for(self.cfg, LocalData(self.cfg))
                info = BundleInfo(server_round, deadline=0)
                if phase == MessageType.TRAIN:
                    done = client_app.train_clients(process, tasks, info)
                else:
                    done = [client_app.evaluate_client(process, t, info) for t in tasks]
                return {outcome.pid: outcome for outcome in done}
            finally:
                torch.set_num_threads(threads)  # the driver's, for the central evaluation

        return outcomes


def test_the_loop_on_an_in_process_exchange_gives_the_engines_numbers(tiny_cifar, tmp_path):
    done, _ = simulate(tiny_cifar, tmp_path, "engine", OPTIONS)
    assert done.returncode == 0, done.stderr[-3000:]

    options = dict(clients=3, rounds=2, batch_size=16, fraction_fit=0.67, strategy="scaffold")
    cfg = make_config(**options, data=str(tiny_cifar), results_dir=str(tmp_path), name="here")
    inputs = prepare(cfg)
    exchange = InProcessExchange(cfg)
    with folders.claimed_run_dir(cfg) as run_dir:
        assemble(inputs, run_dir, None, {}).loop.run(exchange)

    for name in WALL_CLOCK:
        assert computed(run_dir, name).equals(computed(tmp_path / "engine", name)), name
    assert [phase for phase, _, _ in exchange.phases] == ["train", "evaluate"] * 2
    assert len(exchange.phases[0][2]) == 2  # 0.67 of 3 clients train each round


def test_the_next_rounds_training_is_on_its_way_during_the_central_evaluation(
    tiny_cifar, tmp_path
) -> None:
    """Rounds overlap: round t+1's clients are sent their training before the driver
    evaluates round t (round 0: the initial model), never past the last round."""
    cfg = make_config(clients=3, rounds=3, data=str(tiny_cifar), results_dir=str(tmp_path))
    exchange, central = InProcessExchange(cfg), []

    def evaluator(cfg, dataset):
        def evaluate(arrays):
            central.append(len(exchange.phases))  # what had been sent by then
            return 2.0, 0.5

        return evaluate

    with folders.claimed_run_dir(cfg) as run_dir:
        assembled = assemble(prepare(cfg), run_dir, None, {}, Seams(evaluator=evaluator))
        assembled.loop.run(exchange)
    phases = [(phase, server_round) for phase, server_round, _ in exchange.phases]
    assert phases == [(p, r) for r in (1, 2, 3) for p in ("train", "evaluate")]
    # round 0's evaluation after round 1's training went out, round 1's after round 2's…
    assert [phases[n - 1] for n in central] == [
        ("train", 1),
        ("train", 2),
        ("train", 3),
        ("evaluate", 3),
    ]


class _LinkDown(InProcessExchange):
    """Round 2's training cannot be sent, once or every time."""

    def __init__(self, cfg: RunConfig, failures: int) -> None:
        super().__init__(cfg)
        self.failures = failures

    def send(self, phase, server_round, tasks):
        if (phase, server_round) == ("train", 2) and self.failures:
            self.failures -= 1
            raise RuntimeError("the link is down")
        return super().send(phase, server_round, tasks)


@pytest.mark.parametrize("failures", [1, 2])
def test_a_round_that_cannot_be_sent_ahead_keeps_the_round_before(
    failures, tiny_cifar, tmp_path
) -> None:
    """Sending round 2 ahead fails: round 1 is evaluated and kept all the same, and
    round 2 tries again when it starts: it runs (one failure) or raises there (two)."""
    cfg = make_config(clients=2, rounds=2, data=str(tiny_cifar), results_dir=str(tmp_path))
    exchange = _LinkDown(cfg, failures)
    with folders.claimed_run_dir(cfg) as run_dir:
        loop = assemble(prepare(cfg), run_dir, None, {}).loop
        if failures == 1:
            loop.run(exchange)
        else:
            with pytest.raises(RuntimeError, match="the link is down"):
                loop.run(exchange)
    rounds = computed(run_dir, "rounds.csv")
    assert rounds["round"].tolist() == ([0, 1, 2] if failures == 1 else [0, 1])
    assert rounds["central_accuracy"].notna().all()
