"""The Flower ServerApp: a small round loop around a Flower strategy.

The loop is `Strategy.start` with what a simulation harness needs: clients are sampled
by partition id with a seeded generator (Flower samples random node ids with the
global `random`); the strategy's per-client messages travel in bundles of several
virtual clients over a few engine nodes (fedsim.protocol) and come back as one reply
per client, in partition order, so the same seed gives the same numbers whatever the
bundling; every client's outcome (status, time, bytes) is recorded; clients' memory is
kept between their rounds; and every round ends in the callbacks, which write the
results. Aggregation itself is the strategy's own.

Rounds run on a simulated clock (fedsim.clock): a round samples among the clients online
at its simulated start and ends when its updates have arrived, by one of three rules
(wait for all, --deadline, --over-select); the late ones are stragglers, discarded
before the strategy sees them. FedBuff replaces the round by its own schedule
(fedsim.asynchronous), one buffered server update per row.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy

from fedsim.algorithms import ASYNCHRONOUS
from fedsim.ground import messages
from fedsim.ground.config import RunConfig, sample_count
from fedsim.ground.errors import Diverged, RunAborted, RunEnded, RunStopped
from fedsim.ground.messages import BundleInfo, ClientOutcome, ClientTask
from fedsim.outputs.records import ClientRecord, RoundCallback, RoundRecord, Timings
from fedsim.simulation.client_states import ClientStates
from fedsim.simulation.clock import ClockState, round_end, sample_size, time_clients
from fedsim.simulation.profiles import Profiles, median_profiles

CentralEvaluate = Callable[[ArrayRecord], tuple[float, float]]
PHASES = {MessageType.TRAIN: "train", MessageType.EVALUATE: "evaluate"}


POLL_SECONDS = 0.02  # how often the loop looks for replies (Flower's own grid waits 0.1 s)
RESEND_SECONDS = 0.5  # wait before sending again a bundle that met a restarting actor
# Ray 2.55's words for a call that reached an actor while it was being restarted (it
# never ran, unlike a call whose process died under it): Flower hands the error over
# as text, so the text is what there is to match (tests/test_faults.py covers it).
RESTARTING = ("ActorUnavailableError", "The actor is restarting")


def sample_from(
    seed: int, draw: int, candidates: Sequence[int], count: int, stream: int
) -> list[int]:
    """`count` of `candidates` (all of them if there are no more), drawn by a generator
    seeded by (seed, draw, stream) alone; sorted. `draw` is the round, or FedBuff's
    count of draws so far."""
    if count >= len(candidates):
        return list(candidates)
    rng = np.random.default_rng([seed, draw, stream])
    return sorted(candidates[i] for i in rng.choice(len(candidates), size=count, replace=False))


def sample_clients(
    seed: int, server_round: int, clients: int, fraction: float, stream: int
) -> list[int]:
    """Which partitions take part: depends on the seed, round and fraction alone."""
    return sample_from(seed, server_round, range(clients), sample_count(clients, fraction), stream)


def training_clients(cfg: RunConfig) -> int:
    """The most clients one training exchange carries: a round's sample (over-selected
    with --over-select), or FedBuff's clients in flight."""
    if cfg.strategy in ASYNCHRONOUS:
        return min(cfg.clients, cfg.concurrency)
    return min(cfg.clients, sample_size(cfg, sample_count(cfg.clients, cfg.fraction_fit)))


# ---- transport: which engine node carries which clients --------------------------------

MAX_BUNDLE_BYTES = 256 * 2**20  # a bundle's reply carries one model per client


def bundle_count(clients: int, concurrency: int, reply_bytes: int, per_message: int | None) -> int:
    """How many messages carry `clients` clients: `--clients-per-message` if given; else
    two per concurrent actor (room to balance unequal clients), more if the replies'
    models would make a message larger than MAX_BUNDLE_BYTES (a ResNet-18 update is
    45 MB)."""
    if clients == 0:
        return 0
    if per_message:
        return math.ceil(clients / per_message)
    by_size = math.ceil(clients * reply_bytes / MAX_BUNDLE_BYTES)
    return min(clients, max(2 * concurrency, by_size))


def plan_bundles(pids: Sequence[int], work: Sequence[float], count: int) -> list[list[int]]:
    """Split clients into `count` bundles of about equal work, at most ⌈n/count⌉ each
    (longest first onto the least loaded bundle); each bundle lists its clients in
    partition order. Deterministic, and it changes no result: only who waits for whom."""
    cap = math.ceil(len(pids) / count) if count else 0
    bundles: list[list[int]] = [[] for _ in range(count)]
    load = [0.0] * count
    for weight, pid in sorted(zip(work, pids, strict=True), key=lambda x: (-x[0], x[1])):
        open_ = [b for b in range(count) if len(bundles[b]) < cap]
        target = min(open_, key=lambda b: (load[b], b))
        bundles[target].append(pid)
        load[target] += weight
    return [sorted(b) for b in bundles if b]


@dataclass(frozen=True)
class Transport:
    """How the loop reaches clients. In simulation, engine nodes are mailboxes: a
    message names its clients, so `nodes` is what one round needs, not the population.
    On Flower's Deployment Engine, node i is the device holding partition i."""

    concurrency: int = 1  # clients the engine runs at a time
    per_message: int | None = None  # --clients-per-message
    one_node_per_client: bool = False

    def route(
        self, nodes: list[int], pids: list[int], work: list[float], reply_bytes: int
    ) -> list[tuple[int, list[int]]]:
        if self.one_node_per_client:
            return [(nodes[pid], [pid]) for pid in pids]
        count = bundle_count(len(pids), self.concurrency, reply_bytes, self.per_message)
        bundles = plan_bundles(pids, work, count)
        return [(nodes[i % len(nodes)], bundle) for i, bundle in enumerate(bundles)]


def nodes_needed(cfg: RunConfig, transport: Transport, reply_bytes: int) -> int:
    """Engine nodes a run needs: the most messages one phase of a round sends."""
    counts = {training_clients(cfg): reply_bytes}
    if cfg.evaluates_on_clients:
        counts.setdefault(sample_count(cfg.clients, cfg.fraction_evaluate), 0)
        if cfg.evaluate_all_every:
            counts.setdefault(cfg.clients, 0)
    return max(
        bundle_count(n, transport.concurrency, size, transport.per_message)
        for n, size in counts.items()
    )


# ---- the loop ----------------------------------------------------------------------------


class _SampledGrid:
    """A view of the grid that shows a strategy one node id per sampled client (its
    partition id + 1); the strategy addresses its messages to those."""

    def __init__(self, grid: Grid, pids: Sequence[int]) -> None:
        self._grid = grid
        self._node_ids = [pid + 1 for pid in pids]

    def get_node_ids(self) -> list[int]:
        return self._node_ids

    def __getattr__(self, name: str):
        return getattr(self._grid, name)


@dataclass
class Exchange:
    """One phase of a round: every sampled client's outcome, and the replies of the
    ones that succeeded (in partition order) as the strategy aggregates them."""

    replies: list[Message]
    clients: list[ClientRecord] = field(default_factory=list)
    # training clients' new memories, kept by the caller once their updates are
    states: dict[int, RecordDict] = field(default_factory=dict)

    def by_client(self) -> dict[int, Message]:
        """The replies by partition id."""
        ok = [c.client for c in self.clients if c.status == messages.OK]
        return dict(zip(ok, self.replies, strict=True))

    def discard(self, pids: Collection[int]) -> None:
        """These clients' updates arrived too late: the strategy never sees them, their
        memories are not kept, and clients.csv calls them stragglers."""
        self.replies = [reply for pid, reply in self.by_client().items() if pid not in pids]
        for client in self.clients:
            if client.client in pids:
                client.status = messages.STRAGGLER
        for pid in pids:
            self.states.pop(pid, None)


class Schedule(Protocol):
    """How the training of one row comes about, when it is not a synchronous round."""

    def train(self, loop: FederatedLoop, grid: Grid, server_round: int) -> Exchange: ...


class FederatedLoop:
    """Runs the rounds on a grid and reports each one to the callbacks.

    A fresh run starts with the initial model's central evaluation as round 0; a resumed
    one (`completed` = the last checkpointed round) goes on with the round after it.
    """

    def __init__(
        self,
        cfg: RunConfig,
        strategy: Strategy,
        arrays: ArrayRecord,
        central_evaluate: CentralEvaluate,
        callbacks: Iterable[RoundCallback],
        timings: Timings,
        sizes: tuple[np.ndarray, np.ndarray],
        transport: Transport,
        states: ClientStates | None = None,
        completed: int | None = None,
        profiles: Profiles | None = None,
        clock: ClockState | None = None,
        schedule: Schedule | None = None,
    ) -> None:
        self.cfg = cfg
        self.strategy = strategy
        self.arrays = arrays
        self.central_evaluate = central_evaluate
        self.callbacks = list(callbacks)
        self.timings = timings
        self.train_sizes, self.val_sizes = sizes
        self.transport = transport
        self.states = states if states is not None else ClientStates()
        self.completed = completed
        self.profiles = profiles if profiles is not None else median_profiles(cfg.clients)
        self.clock = clock if clock is not None else ClockState()
        self.schedule = schedule  # None: synchronous rounds
        self.stop = threading.Event()
        self.finished = threading.Event()  # set when the rounds are over, however
        self.error: BaseException | None = None  # why they ended early, if they did
        self.nodes: list[int] = []
        self.reply_bytes = messages.recorddict_bytes(RecordDict({messages.ARRAYS: arrays}))

    def run(self, grid: Grid) -> None:
        try:
            self._run(grid)
        except BaseException as error:
            self.error = error
            raise
        finally:
            self.finished.set()

    def _run(self, grid: Grid) -> None:
        self.nodes = self._wait_for_nodes(grid)
        if self.completed is None:
            loss, accuracy = self._central()
            self._emit(
                RoundRecord(
                    round=0, central_loss=loss, central_accuracy=accuracy, sim_clock=self.clock.now
                )
            )
        without: list[RoundRecord] = []  # the latest rounds in a row without an update
        for server_round in range((self.completed or 0) + 1, self.cfg.rounds + 1):
            record = self._round(grid, server_round)
            _check_finite(record)  # a diverged round is not kept: resume starts before it
            if record.clients_aggregated:
                self.clock.updated_rounds += 1
                without = []
            else:
                without.append(record)
            self._emit(record)
            if len(without) >= (most := self.cfg.max_failed_rounds):
                where = f"{len(without)} rounds in a row (--max-failed-rounds {most})"
                raise RunAborted(no_updates(without, where, self.cfg.deadline))
        if not self.clock.updated_rounds:
            where = f"all {self.cfg.rounds} rounds (the model is the initial one)"
            raise RunAborted(no_updates(without, where, self.cfg.deadline))
        for callback in self.callbacks:
            callback.on_run_end(self.arrays)

    def _round(self, grid: Grid, server_round: int) -> RoundRecord:
        cfg, started, before = self.cfg, time.perf_counter(), self.clock.now
        if self.schedule is None:
            train = self._train_synchronously(grid, server_round)
        else:
            train = self.schedule.train(self, grid, server_round)
        self.timings.train += time.perf_counter() - started
        record = RoundRecord(
            round=server_round,
            clients=train.clients,
            sim_round_seconds=self.clock.now - before,
            sim_clock=self.clock.now,
        )
        if train.replies:
            tick = time.perf_counter()
            arrays, metrics = self.strategy.aggregate_train(server_round, train.replies)
            self.timings.aggregate += time.perf_counter() - tick
            if arrays is not None:
                self.arrays = arrays
            record.train_loss = _metric(metrics, messages.TRAIN_LOSS)
            record.dp_epsilon = _metric(metrics, messages.DP_EPSILON)
            if cfg.evaluates_on_clients:
                self._evaluate_on_clients(grid, server_round, record)
            record.central_loss, record.central_accuracy = self._central()
        record.round_seconds = time.perf_counter() - started
        self.timings.per_round.append(record.round_seconds)
        self.timings.rounds += record.round_seconds
        return record

    def _train_synchronously(self, grid: Grid, server_round: int) -> Exchange:
        """Sample among the clients online at the round's simulated start, train them,
        and keep the updates that arrive in time; the clock moves to the round's end."""
        cfg, clock = self.cfg, self.clock
        start = self.profiles.next_online(clock.now)
        if start is None:
            raise RunAborted(f"no client is online after simulated second {clock.now:g}")
        wanted = sample_count(cfg.clients, cfg.fraction_fit)
        online = self.profiles.online_at(start)
        sampled = sample_from(cfg.seed, server_round, online, sample_size(cfg, wanted), 0)
        train = self.exchange(grid, MessageType.TRAIN, server_round, sampled)
        finish = time_clients(self.profiles, train.clients, cfg.local_epochs)
        end, late = round_end(finish, wanted if cfg.over_select else None, cfg.deadline)
        train.discard(late)
        for pid, state in train.states.items():
            self.states.set(pid, state)
        clock.now = start + end
        return train

    def _evaluation_sample(self, server_round: int) -> list[int]:
        """The sampled clients (or all of them, every --evaluate-all-every rounds and
        after the last); clients without held-out examples have nothing to evaluate."""
        cfg = self.cfg
        every = cfg.evaluate_all_every
        if every and (server_round % every == 0 or server_round == cfg.rounds):
            pids = list(range(cfg.clients))
        else:
            pids = sample_clients(cfg.seed, server_round, cfg.clients, cfg.fraction_evaluate, 1)
        return [pid for pid in pids if self.val_sizes[pid] > 0]

    def _evaluate_on_clients(self, grid: Grid, server_round: int, record: RoundRecord) -> None:
        tick = time.perf_counter()
        pids = self._evaluation_sample(server_round)
        evaluation = self.exchange(grid, MessageType.EVALUATE, server_round, pids)
        record.clients += evaluation.clients
        if evaluation.replies:
            metrics = self.strategy.aggregate_evaluate(server_round, evaluation.replies)
            record.eval_loss = _metric(metrics, messages.EVAL_LOSS)
            record.eval_accuracy = _metric(metrics, messages.EVAL_ACCURACY)
        self.timings.client_evaluate += time.perf_counter() - tick

    # ---- one phase: strategy messages -> bundles -> engine -> per-client replies -------

    def exchange(
        self, grid: Grid, message_type: str, server_round: int, pids: list[int]
    ) -> Exchange:
        """Let the strategy build its messages for `pids`, carry them in bundles, and
        hand back one reply per client in partition order."""
        if not pids:
            return Exchange(replies=[])
        configure = (
            self.strategy.configure_train
            if message_type == MessageType.TRAIN
            else self.strategy.configure_evaluate
        )
        view = _SampledGrid(grid, pids)
        messages_ = configure(server_round, self.arrays, ConfigRecord(), view)
        sent = {m.metadata.dst_node_id - 1: m for m in messages_}
        training = message_type == MessageType.TRAIN
        sizes = self.train_sizes if training else self.val_sizes
        work = [float(sizes[pid]) * (self.cfg.local_epochs if training else 1) for pid in sent]
        routes = self.transport.route(
            self.nodes, sorted(sent), work, self.reply_bytes if training else 0
        )
        deadline = time.time() + self.cfg.round_timeout
        info = BundleInfo(server_round=server_round, deadline=deadline)
        down = _Measured()
        outgoing = []
        for node, bundle in routes:
            state = self.states.get if training else lambda pid: RecordDict()
            tasks = [ClientTask(pid, sent[pid].content, state(pid)) for pid in bundle]
            message = Message(
                content=messages.pack_tasks(tasks, info),
                dst_node_id=node,
                message_type=message_type,
            )
            outgoing.append((message, bundle))
        outcomes = self._send_and_receive(grid, outgoing, deadline)
        exchange = Exchange(replies=[])
        for pid in sorted(sent):
            outcome = outcomes[pid]
            if outcome.status == messages.OK:
                exchange.replies.append(Message(content=outcome.content, reply_to=sent[pid]))
                if training and outcome.state is not None:
                    exchange.states[pid] = outcome.state
            tick = time.perf_counter()
            phase, examples = PHASES[message_type], int(sizes[pid])
            down_bytes = down.bytes(sent[pid].content)
            exchange.clients.append(
                _client_record(server_round, phase, pid, examples, outcome, down_bytes)
            )
            self.timings.recording += time.perf_counter() - tick
            self.timings.recording_in_clients += outcome.measured_in
        return exchange

    def _send_and_receive(
        self, grid: Grid, outgoing: list[tuple[Message, list[int]]], deadline: float
    ) -> dict[int, ClientOutcome]:
        """Push the bundles, wait for their replies until the deadline (stoppable,
        polling faster than Flower's grid), and read each client's outcome; the clients
        of a bundle that failed as a whole (its process died) or did not answer in time
        fail with it. A bundle that reached an actor while Ray was restarting it never
        ran: it is sent again."""
        waiting: dict[str, tuple[Message, list[int]]] = {}

        def push(batch: list[tuple[Message, list[int]]]) -> None:
            ids = grid.push_messages([m for m, _ in batch])
            waiting.update(zip(ids, batch, strict=True))

        push(outgoing)
        outcomes: dict[int, ClientOutcome] = {}
        while waiting and time.time() < deadline:
            self._check_stop()
            again = []
            for reply in grid.pull_messages(list(waiting)):
                message, bundle = waiting.pop(reply.metadata.reply_to_message_id)
                if reply.has_error() and _never_ran(reply.error.reason):
                    again.append((_copy(message), bundle))
                elif reply.has_error():
                    error = _reason(reply.error.reason)
                    outcomes.update(
                        (pid, ClientOutcome(pid, messages.FAILED, error=error)) for pid in bundle
                    )
                else:
                    outcomes.update((o.pid, o) for o in messages.unpack_outcomes(reply.content))
            if again:
                time.sleep(RESEND_SECONDS)  # the actor's restart takes about a second
                push(again)
            elif waiting:
                time.sleep(POLL_SECONDS)
        for _, bundle in waiting.values():
            outcomes.update((pid, ClientOutcome(pid, messages.TIMEOUT)) for pid in bundle)
        return outcomes

    def _check_stop(self) -> None:
        if self.stop.is_set():
            raise RunStopped("stopped by the driver")

    def _central(self) -> tuple[float, float]:
        tick = time.perf_counter()
        result = self.central_evaluate(self.arrays)
        self.timings.central_evaluate += time.perf_counter() - tick
        return result

    def _emit(self, record: RoundRecord) -> None:
        for callback in self.callbacks:
            callback.on_round_end(record, self.arrays)

    def _wait_for_nodes(self, grid: Grid, patience: float = 120.0) -> list[int]:
        """The engine's nodes, in a fixed order."""
        deadline = time.monotonic() + patience
        wanted = self.cfg.clients if self.transport.one_node_per_client else 1
        while len(nodes := sorted(grid.get_node_ids())) < wanted:
            if time.monotonic() > deadline:
                raise RunAborted(f"only {len(nodes)} of {wanted} nodes registered")
            self._check_stop()
            time.sleep(POLL_SECONDS)
        return nodes


class _Measured:
    """Serialized sizes of what the strategy sends, measured once per distinct content
    (a FedAvg round sends every client the same RecordDict)."""

    def __init__(self) -> None:
        self._sizes: dict[int, tuple[RecordDict, int]] = {}

    def bytes(self, content: RecordDict) -> int:
        if id(content) not in self._sizes:
            self._sizes[id(content)] = (content, messages.recorddict_bytes(content))
        return self._sizes[id(content)][1]


def _client_record(
    server_round: int, phase: str, pid: int, examples: int, outcome: ClientOutcome, down: int
) -> ClientRecord:
    metrics = {}
    if outcome.content is not None:
        metrics = next(iter(outcome.content.metric_records.values()), {})
    loss_key = messages.TRAIN_LOSS if phase == "train" else messages.EVAL_LOSS
    return ClientRecord(
        round=server_round,
        phase=phase,
        client=pid,
        examples=examples,
        loss=_float(metrics.get(loss_key)),
        accuracy=_float(metrics.get(messages.EVAL_ACCURACY)) if phase == "evaluate" else None,
        status=outcome.status,
        seconds=outcome.seconds,
        bytes_down=down,
        bytes_up=outcome.bytes_up,
        error=outcome.error,
    )


def _never_ran(reason: str) -> bool:
    return all(words in reason for words in RESTARTING)


_ESCAPES = re.compile(r"\x1b\[[0-9;]*m")
_RAISED = re.compile(r"^([\w.]+(?:Error|Exception|Exit|Interrupt)): (.+)$")


def _reason(text: str) -> str:
    """The line that says what went wrong, from the traceback-laden text Ray and Flower
    make of an error in a client process (colour codes and wrappers dropped): the
    innermost `SomeError: message` that is not Flower's own ClientAppException."""
    lines = [line.strip() for line in _ESCAPES.sub("", text).splitlines() if line.strip()]
    raised = [line for line in lines if _RAISED.match(line) and "ClientAppException" not in line]
    return (raised or lines or [""])[-1][:300]


def _copy(message: Message) -> Message:
    return Message(
        content=message.content,
        dst_node_id=message.metadata.dst_node_id,
        message_type=message.metadata.message_type,
    )


def _float(value) -> float | None:
    return None if value is None else float(value)


def _metric(metrics, name: str) -> float | None:
    if metrics is None or name not in metrics:
        return None
    return float(metrics[name])


def no_updates(records: Sequence[RoundRecord], where: str, deadline: float | None) -> str:
    """Why no update reached the server in `records`, in clients.csv's words: "every
    sampled client failed" when they all failed, timed out or dropped out; else each
    status with its count (stragglers came after --deadline, or were over-selected)."""
    counts = Counter(c.status for r in records for c in r.clients if c.phase == "train")
    if set(counts) <= set(messages.FAILURES):
        return f"every sampled client failed in {where}"
    said = ", ".join(f"{status} for {n}" for status, n in sorted(counts.items()))
    hint = ""
    if counts[messages.STRAGGLER] and deadline is not None:
        hint = f"; --deadline {deadline:g} simulated seconds is shorter than their rounds"
    return f"no update reached the server in {where}: clients.csv says {said}{hint}"


def _check_finite(record: RoundRecord) -> None:
    """A diverged model (NaN or infinite loss) cannot recover: stop at the first one.
    The simulated clock and the privacy spent are finite by the options' bounds; should
    one not be, the run says so rather than write it."""
    for name in ("train_loss", "eval_loss", "central_loss"):
        value = getattr(record, name)
        if value is not None and not math.isfinite(value):
            raise Diverged(
                f"the model diverged in round {record.round}: {name} is {value} "
                "(try a smaller --lr); the rounds before it are kept"
            )
    for name in ("sim_clock", "dp_epsilon"):
        value = getattr(record, name)
        if value is not None and not math.isfinite(value):
            raise RunEnded(f"{name} is {value} in round {record.round}: it cannot be computed")


def build_server_app(loop: FederatedLoop) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        loop.run(grid)

    return app
