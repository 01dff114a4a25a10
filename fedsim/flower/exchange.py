"""The loop's exchange over Flower's engine: which engine node carries which clients,
bundles out, replies back, and what becomes of a bundle that never answers.

In simulation, engine nodes are mailboxes: a message names its clients (a bundle,
fedsim.flower.bundles), so the nodes a run needs are what one phase of a round sends,
not the population, and Flower's per-node polling costs what the round's messages need.
On Flower's Deployment Engine, node i is the device holding partition i. A bundle that
reached an actor while Ray was restarting it never ran and is sent again; one that fails
as a whole (its process died) fails its clients; one with no answer by the round's
deadline times them out.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from flwr.app import Message, MessageType
from flwr.serverapp import Grid

from fedsim.flower import bundles
from fedsim.flower.bundles import BundleInfo
from fedsim.ground import messages
from fedsim.ground.errors import RunAborted, RunStopped
from fedsim.ground.messages import ClientOutcome, ClientTask

POLL_SECONDS = 0.02  # how often the exchange looks for replies (Flower's own grid: 0.1 s)
RESEND_SECONDS = 0.5  # wait before sending again a bundle that met a restarting actor
NODES_PATIENCE = 120.0  # seconds to wait for the engine's nodes to register
# Ray 2.55's words for a call that reached an actor while it was being restarted (it
# never ran, unlike a call whose process died under it): Flower hands the error over
# as text, so the text is what there is to match (tests/test_faults.py covers it).
RESTARTING = ("ActorUnavailableError", "The actor is restarting")

MAX_BUNDLE_BYTES = 256 * 2**20  # a bundle's reply carries one model per client

# Told as outcomes arrive: (phase, server round, clients back, clients sent)
Progress = Callable[[str, int, int, int], None]


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


def nodes_needed(phase_sizes: Sequence[tuple[int, int]], transport: Transport) -> int:
    """Engine nodes a run needs: the most messages one phase of a round sends, for the
    phases' (clients, reply bytes) the run has."""
    return max(
        bundle_count(n, transport.concurrency, size, transport.per_message)
        for n, size in phase_sizes
    )


class FlowerExchange:
    """fedsim.simulation.loop's Exchange over a Flower grid: the tasks of one phase in
    bundles to the engine's nodes, the outcomes back, stoppable by `stop`. A phase's
    deadline (--round-timeout) counts from when its bundles are pushed."""

    def __init__(
        self,
        grid: Grid,
        transport: Transport,
        reply_bytes: int,
        round_timeout: float,
        stop: threading.Event,
        wanted_nodes: int = 1,
        progress: Progress | None = None,
    ) -> None:
        self.grid, self.transport = grid, transport
        self.reply_bytes, self.round_timeout = reply_bytes, round_timeout
        self.stop, self.wanted_nodes = stop, wanted_nodes
        self.progress = progress
        self._nodes: list[int] = []

    def send(
        self, phase: str, server_round: int, tasks: list[ClientTask]
    ) -> Callable[[], dict[int, ClientOutcome]]:
        """Push the tasks' bundles now; the call returned waits for their outcomes."""
        if not tasks:
            return dict
        by_pid = {task.pid: task for task in tasks}
        pids = sorted(by_pid)
        reply_bytes = self.reply_bytes if phase == MessageType.TRAIN else 0
        work = [by_pid[pid].work for pid in pids]
        routes = self.transport.route(self.nodes(), pids, work, reply_bytes)
        deadline = time.time() + self.round_timeout
        info = BundleInfo(server_round=server_round, deadline=deadline)
        outgoing = [
            (
                Message(
                    content=bundles.pack_tasks([by_pid[pid] for pid in bundle], info),
                    dst_node_id=node,
                    message_type=phase,
                ),
                bundle,
            )
            for node, bundle in routes
        ]
        waiting: dict[str, tuple[Message, list[int]]] = {}
        self._push(outgoing, waiting)

        def told(done: int) -> None:
            if self.progress is not None:
                self.progress(messages.PHASES[phase], server_round, done, len(pids))

        return lambda: self._receive(waiting, deadline, told)

    def nodes(self) -> list[int]:
        """The engine's nodes, in a fixed order, once enough have registered."""
        deadline = time.monotonic() + NODES_PATIENCE
        while len(self._nodes) < self.wanted_nodes:
            self._nodes = sorted(self.grid.get_node_ids())
            if len(self._nodes) >= self.wanted_nodes:
                break
            if time.monotonic() > deadline:
                found = len(self._nodes)
                raise RunAborted(f"only {found} of {self.wanted_nodes} nodes registered")
            self._check_stop()
            time.sleep(POLL_SECONDS)
        return self._nodes

    def _push(
        self, batch: list[tuple[Message, list[int]]], waiting: dict[str, tuple[Message, list[int]]]
    ) -> None:
        ids = self.grid.push_messages([m for m, _ in batch])
        waiting.update(zip(ids, batch, strict=True))

    def _receive(
        self,
        waiting: dict[str, tuple[Message, list[int]]],
        deadline: float,
        told: Callable[[int], None],
    ) -> dict[int, ClientOutcome]:
        """Wait for the bundles' replies until the deadline (stoppable, polling faster
        than Flower's grid), and read each client's outcome; the clients of a bundle
        that failed as a whole (its process died) or did not answer in time fail with
        it. A bundle that reached an actor while Ray was restarting it never ran: it is
        sent again."""
        outcomes: dict[int, ClientOutcome] = {}
        told(0)
        while waiting and time.time() < deadline:
            self._check_stop()
            again, known = [], len(outcomes)
            for reply in self.grid.pull_messages(list(waiting)):
                message, bundle = waiting.pop(reply.metadata.reply_to_message_id)
                if reply.has_error() and _never_ran(reply.error.reason):
                    again.append((_copy(message), bundle))
                elif reply.has_error():
                    error = _reason(reply.error.reason)
                    outcomes.update(
                        (pid, ClientOutcome(pid, messages.FAILED, error=error)) for pid in bundle
                    )
                else:
                    outcomes.update((o.pid, o) for o in bundles.unpack_outcomes(reply.content))
            if len(outcomes) > known:
                told(len(outcomes))
            if again:
                time.sleep(RESEND_SECONDS)  # the actor's restart takes about a second
                self._push(again, waiting)
            elif waiting:
                time.sleep(POLL_SECONDS)
        for _, bundle in waiting.values():
            outcomes.update((pid, ClientOutcome(pid, messages.TIMEOUT)) for pid in bundle)
        return outcomes

    def _check_stop(self) -> None:
        if self.stop.is_set():
            raise RunStopped("stopped by the driver")


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
