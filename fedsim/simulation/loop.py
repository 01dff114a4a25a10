"""The round loop: sample -> exchange -> clock -> strategy -> callbacks.

It is Flower's `Strategy.start` with what a simulation harness needs, and nothing about
how clients are reached: an Exchange carries each client's task and brings back its
outcome (fedsim.flower.exchange does it over Flower's engine; a test may do it in the
process). The loop samples clients by partition id (fedsim.simulation.sampling), lets
the strategy build each client's message, keeps clients' memories between their
rounds, runs the simulated clock, hands the replies that arrived in time to the
strategy in partition order, and ends every round in the callbacks, which write the
results. Aggregation itself is the strategy's own.

A synchronous round samples among the clients online at its simulated start and ends
when its updates have arrived, by one of three rules (wait for all, --deadline,
--over-select); the late ones are stragglers, discarded before the strategy sees them.
An asynchronous algorithm's schedule (FedBuff: fedsim.simulation.buffered) replaces the
round by one buffered server update per row.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict

from fedsim.ground import messages, streams
from fedsim.ground.config import RunConfig
from fedsim.ground.errors import RunAborted
from fedsim.ground.messages import ClientOutcome, ClientTask
from fedsim.outputs.callbacks import RoundCallback
from fedsim.outputs.records import GroupRecord, RoundRecord, Timings
from fedsim.simulation.clock import local_work, round_end, time_clients
from fedsim.simulation.phase import (
    Measured,
    PhaseResult,
    Population,
    TrainPhase,
    check_finite,
    client_record,
    metric,
    no_updates,
)
from fedsim.simulation.sampling import sample_clients, sample_size
from fedsim.simulation.state import RunState

# The global model's loss and accuracy on the test split; where the data has groups, a
# third item: each group's (name, examples, loss, accuracy)
CentralEvaluate = Callable[[ArrayRecord], tuple]


class Exchange(Protocol):
    """How the loop reaches clients: their tasks for one phase of a round out now, and
    a call that waits for their outcomes (one per task, by partition id), which may
    stop the run (RunStopped). Sending does not wait, so that a round's training is
    on its way while the driver evaluates the round before it."""

    def send(
        self, phase: str, server_round: int, tasks: list[ClientTask]
    ) -> Callable[[], dict[int, ClientOutcome]]: ...


@dataclass(frozen=True)
class _Sent:
    """A phase's messages on their way: the strategy's message to each client (by
    partition id) and the call that waits for the outcomes."""

    message_type: str
    server_round: int
    messages: dict[int, Message]
    outcomes: Callable[[], dict[int, ClientOutcome]]


@dataclass(frozen=True)
class _Started:
    """A synchronous round's training on its way, from its simulated start."""

    start: float
    sent: _Sent


class Schedule(Protocol):
    """How the training of one row comes about, when it is not a synchronous round:
    the arrivals of one server update, the clock and clients' memories moved on."""

    def train(self, server_round: int, state: RunState, train: TrainPhase) -> PhaseResult: ...


class RoundLoop:
    """Runs the rounds and reports each one to the callbacks.

    A fresh run starts with the initial model's central evaluation as round 0; a resumed
    one (`state.completed`) goes on with the round after it. `stop` ends the rounds at
    the exchange's next look; `finished` is set once they are over, however they ended
    (`error` says why, if they ended early).

    Synchronous rounds overlap: once round t's model is aggregated (or, for round 1,
    built), round t+1's clients are sampled and sent it, and the driver evaluates
    round t centrally and writes its results while they train. Nothing round t+1
    sends depends on that evaluation or on those files, so every number is what it is
    one round after another; a run that ends after round t (a stop, a divergence)
    leaves round t+1's training unused. A round's seconds are those it adds after the
    round before it: its training, less what overlapped, and the rest of the round.
    """

    def __init__(
        self,
        cfg: RunConfig,
        state: RunState,
        population: Population,
        central_evaluate: CentralEvaluate,
        callbacks: Iterable[RoundCallback],
        timings: Timings,
        schedule: Schedule | None = None,
        personal: bool = False,
        held_out: Sequence[int] = (),
    ) -> None:
        self.cfg, self.state, self.population = cfg, state, population
        # A personal algorithm's clients are judged with their memory (their own model)
        self.personal = personal
        self.held_out = frozenset(held_out)  # never train; judged as unseen clients
        self.central_evaluate = central_evaluate
        self.callbacks = list(callbacks)
        self.timings = timings
        self.schedule = schedule  # None: synchronous rounds
        self.stop = threading.Event()
        self.finished = threading.Event()
        self.error: BaseException | None = None
        self._ahead: _Started | None = None  # the next round's training, already sent

    def run(self, exchange: Exchange) -> None:
        try:
            self._run(exchange)
        except BaseException as error:
            self.error = error
            raise
        finally:
            self.state.memories.close()  # however the rounds ended: the file alone is the store
            self.finished.set()

    def _run(self, exchange: Exchange) -> None:
        cfg, state = self.cfg, self.state
        if state.completed is None:
            self._send_ahead(exchange, 1)
            record = RoundRecord(0)
            self._central(record)
            record.sim_clock = state.clock.now
            self._emit(record)
        without: list[RoundRecord] = []  # the latest rounds in a row without an update
        for server_round in range((state.completed or 0) + 1, cfg.rounds + 1):
            record = self._round(exchange, server_round)
            check_finite(record)  # a diverged round is not kept: resume starts before it
            if record.clients_aggregated:
                state.clock.updated_rounds += 1
                without = []
            else:
                without.append(record)
            state.memories.commit(server_round)  # before the checkpoint that names the round
            self._emit(record)
            if len(without) >= (most := cfg.max_failed_rounds):
                where = f"{len(without)} rounds in a row (--max-failed-rounds {most})"
                raise RunAborted(no_updates(without, where, cfg.deadline))
        if not state.clock.updated_rounds:
            where = f"all {cfg.rounds} rounds (the model is the initial one)"
            raise RunAborted(no_updates(without, where, cfg.deadline))
        for callback in self.callbacks:
            callback.on_run_end(state.arrays)

    def _round(self, exchange: Exchange, server_round: int) -> RoundRecord:
        state, started, before = self.state, time.perf_counter(), self.state.clock.now

        def train(draw: int, pids: list[int]) -> PhaseResult:
            return self._phase(exchange, MessageType.TRAIN, draw, pids)

        if self.schedule is None:
            result = self._synchronous(exchange, server_round)
        else:
            result = self.schedule.train(server_round, state, train)
        self.timings.train += time.perf_counter() - started
        record = RoundRecord(
            round=server_round,
            clients=result.clients,
            sim_round_seconds=state.clock.now - before,
            sim_clock=state.clock.now,
        )
        if result.replies:
            tick = time.perf_counter()
            arrays, metrics = state.strategy.aggregate_train(server_round, result.replies)
            self.timings.aggregate += time.perf_counter() - tick
            if arrays is not None:
                state.arrays = arrays
            record.train_loss = metric(metrics, messages.TRAIN_LOSS)
            record.dp_epsilon = metric(metrics, messages.DP_EPSILON)
            if self.cfg.evaluates_on_clients:
                self._evaluate_on_clients(exchange, server_round, record)
            self._send_ahead(exchange, server_round + 1)
            self._central(record)
        record.round_seconds = time.perf_counter() - started
        self.timings.per_round.append(record.round_seconds)
        self.timings.rounds += record.round_seconds
        return record

    def _synchronous(self, exchange: Exchange, server_round: int) -> PhaseResult:
        """Train the round's clients (sent already, if the round before sent them ahead)
        and keep the updates that arrive in time; the clock moves to the round's end."""
        cfg, clock, profiles = self.cfg, self.state.clock, self.population.profiles
        started = self._ahead or self._start_training(exchange, server_round)
        self._ahead = None
        if started is None:
            raise RunAborted(f"no client is online after simulated second {clock.now:g}")
        result = self._receive(started.sent)
        finish = time_clients(profiles, result.clients, cfg)
        wanted = cfg.sampled_per_round if cfg.over_select else None
        end, late = round_end(finish, wanted, cfg.deadline)
        result.discard(late)
        for pid, memory in result.states.items():
            self.state.memories.set(pid, memory)
        clock.now = started.start + end
        return result

    def _send_ahead(self, exchange: Exchange, server_round: int) -> None:
        """Send synchronous round `server_round` its training before the central
        evaluation of the model it trains (the rounds overlap: see the class). Should
        that fail, the round sends it again when it starts, and fails there if it
        must: the round before is evaluated and kept first, as without overlap."""
        if self.schedule is None and server_round <= self.cfg.rounds:
            try:
                self._ahead = self._start_training(exchange, server_round)
            except Exception:
                self._ahead = None

    def _start_training(self, exchange: Exchange, server_round: int) -> _Started | None:
        """Sample among the clients online at the round's simulated start (None: none
        is) and send them their training."""
        cfg, clock, profiles = self.cfg, self.state.clock, self.population.profiles
        start = profiles.next_online(clock.now)
        if start is None:
            return None
        online = [pid for pid in profiles.online_at(start) if pid not in self.held_out]
        count = sample_size(cfg, cfg.sampled_per_round)
        sampled = streams.sample(cfg.seed, server_round, online, count, streams.TRAINING_SAMPLE)
        return _Started(start, self._send(exchange, MessageType.TRAIN, server_round, sampled))

    def _evaluation_sample(self, server_round: int) -> list[int]:
        """The sampled clients (or all of them, every --evaluate-all-every rounds and
        after the last); clients without held-out examples have nothing to evaluate."""
        cfg = self.cfg
        every = cfg.evaluate_all_every
        if every and (server_round % every == 0 or server_round == cfg.rounds):
            pids = list(range(cfg.clients))
        else:
            fraction, stream = cfg.fraction_evaluate, streams.EVALUATION_SAMPLE
            pids = sample_clients(cfg.seed, server_round, cfg.clients, fraction, stream)
        return [pid for pid in pids if self._judged(pid) and pid not in self.held_out]

    def _judged(self, pid: int) -> bool:
        """Whether the client has held-out examples to be judged on."""
        return self.population.val_sizes[pid] > 0

    def _evaluate_on_clients(
        self, exchange: Exchange, server_round: int, record: RoundRecord
    ) -> None:
        tick = time.perf_counter()
        pids = self._evaluation_sample(server_round)
        evaluation = self._phase(exchange, MessageType.EVALUATE, server_round, pids)
        record.clients += evaluation.clients
        if evaluation.replies:
            metrics = self.state.strategy.aggregate_evaluate(server_round, evaluation.replies)
            record.eval_loss = metric(metrics, messages.EVAL_LOSS)
            record.eval_accuracy = metric(metrics, messages.EVAL_ACCURACY)
        unseen = [pid for pid in sorted(self.held_out) if self._judged(pid)]
        if unseen:  # every held-out client, at every client evaluation
            judged = self._phase(exchange, MessageType.EVALUATE, server_round, unseen)
            for client in judged.clients:
                client.phase = messages.UNSEEN
            record.clients += judged.clients
        self.timings.client_evaluate += time.perf_counter() - tick

    def _phase(
        self, exchange: Exchange, message_type: str, server_round: int, pids: list[int]
    ) -> PhaseResult:
        """One phase for `pids`, sent and waited for."""
        return self._receive(self._send(exchange, message_type, server_round, pids))

    def _send(
        self, exchange: Exchange, message_type: str, server_round: int, pids: list[int]
    ) -> _Sent:
        """Let the strategy build its messages for `pids` and have the exchange carry
        them, each with the client's memory (training; evaluation too where the
        algorithm is personal) and its work for the bundles."""
        if not pids:
            return _Sent(message_type, server_round, {}, dict)
        state, training = self.state, message_type == MessageType.TRAIN
        configure = (
            state.strategy.configure_train if training else state.strategy.configure_evaluate
        )
        messages_ = configure(server_round, state.arrays, ConfigRecord(), _Sampled(pids))
        sent = {m.metadata.dst_node_id - 1: m for m in messages_}
        sizes = self.population.train_sizes if training else self.population.val_sizes
        tasks = [
            ClientTask(
                pid,
                sent[pid].content,
                state.memories.get(pid) if training or self.personal else RecordDict(),
                work=float(local_work(self.cfg, int(sizes[pid])) if training else sizes[pid]),
            )
            for pid in sorted(sent)
        ]
        return _Sent(
            message_type, server_round, sent, exchange.send(message_type, server_round, tasks)
        )

    def _receive(self, sent: _Sent) -> PhaseResult:
        """Wait for a phase's outcomes: one record per client, and the replies in
        partition order."""
        outcomes = sent.outcomes()
        training = sent.message_type == MessageType.TRAIN
        sizes = self.population.train_sizes if training else self.population.val_sizes
        result, down = PhaseResult(), Measured()
        for pid in sorted(sent.messages):
            message, outcome = sent.messages[pid], outcomes[pid]
            if outcome.status == messages.OK:
                result.replies.append(Message(content=outcome.content, reply_to=message))
                if training and outcome.state is not None:
                    result.states[pid] = outcome.state
            tick = time.perf_counter()
            phase, examples = messages.PHASES[sent.message_type], int(sizes[pid])
            down_bytes = down.bytes(message.content)
            result.clients.append(
                client_record(sent.server_round, phase, pid, examples, outcome, down_bytes)
            )
            self.timings.recording += time.perf_counter() - tick
            self.timings.recording_in_clients += outcome.measured_in
        return result

    def _central(self, record: RoundRecord) -> None:
        tick = time.perf_counter()
        record.central_loss, record.central_accuracy, *groups = self.central_evaluate(
            self.state.arrays
        )
        record.groups = [GroupRecord(record.round, *group) for group in next(iter(groups), [])]
        self.timings.central_evaluate += time.perf_counter() - tick

    def _emit(self, record: RoundRecord) -> None:
        for callback in self.callbacks:
            callback.on_round_end(record, self.state.arrays)


class _Sampled:
    """What a strategy sees of the federation: one node id per sampled client (its
    partition id + 1), the nodes it addresses its messages to."""

    def __init__(self, pids: Sequence[int]) -> None:
        self._node_ids = [pid + 1 for pid in pids]

    def get_node_ids(self) -> list[int]:
        return self._node_ids
