"""The Flower ServerApp: a small round loop around a Flower strategy.

The loop is `Strategy.start` with four changes a simulation harness needs: clients are
sampled by partition id with a seeded generator (Flower samples random node ids with
the global `random`), replies are aggregated in partition order (so the same seed gives
the same numbers), failed and missing replies are counted, and every round ends in the
callbacks, which write the results. Aggregation itself is the strategy's own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy

from fedsim.client_app import PARTITION_KEY
from fedsim.config import RunConfig
from fedsim.results import RoundCallback, RoundRecord, Timings

CentralEvaluate = Callable[[ArrayRecord], tuple[float, float]]


class RunAborted(RuntimeError):
    """The run cannot go on (every client failing, nodes never showing up)."""


class RunStopped(RuntimeError):
    """The driver asked the loop to stop (Ctrl-C); completed rounds are on disk."""


POLL_SECONDS = 0.02  # how often the loop looks for replies (Flower's own grid waits 0.1 s)


def sample_clients(
    seed: int, server_round: int, clients: int, fraction: float, stream: int
) -> list[int]:
    """Which partitions take part: depends on the seed, round and fraction alone."""
    count = min(clients, max(1, int(clients * fraction)))
    if count == clients:
        return list(range(clients))
    rng = np.random.default_rng([seed, server_round, stream])
    return sorted(rng.choice(clients, size=count, replace=False).tolist())


class _SampledGrid:
    """A view of the grid that shows a strategy only the nodes fedsim sampled."""

    def __init__(self, grid: Grid, node_ids: Sequence[int]) -> None:
        self._grid = grid
        self._node_ids = list(node_ids)

    def get_node_ids(self) -> list[int]:
        return self._node_ids

    def __getattr__(self, name: str):
        return getattr(self._grid, name)


@dataclass
class _Exchange:
    replies: list[Message]  # successful replies, in partition order
    sampled: int
    failed: int


def _with_partition(message: Message, pid: int) -> Message:
    content = RecordDict(dict(message.content.items()))
    content["config"] = ConfigRecord({**message.content["config"], PARTITION_KEY: pid})
    return Message(
        content=content,
        dst_node_id=message.metadata.dst_node_id,
        message_type=message.metadata.message_type,
    )


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
        completed: int | None = None,
    ) -> None:
        self.cfg = cfg
        self.strategy = strategy
        self.arrays = arrays
        self.central_evaluate = central_evaluate
        self.callbacks = list(callbacks)
        self.timings = timings
        self.completed = completed
        self.stop = threading.Event()

    def run(self, grid: Grid) -> None:
        nodes = self._wait_for_nodes(grid)
        if self.completed is None:
            loss, accuracy = self._central()
            self._emit(RoundRecord(round=0, central_loss=loss, central_accuracy=accuracy))
        failed_in_a_row = 0
        for server_round in range((self.completed or 0) + 1, self.cfg.rounds + 1):
            record = self._round(grid, nodes, server_round)
            failed_in_a_row = failed_in_a_row + 1 if record.train_loss is None else 0
            self._emit(record)
            if failed_in_a_row >= self.cfg.max_failed_rounds:
                raise RunAborted(
                    f"every sampled client failed in {failed_in_a_row} rounds in a row "
                    f"(--max-failed-rounds {self.cfg.max_failed_rounds})"
                )
        for callback in self.callbacks:
            callback.on_run_end(self.arrays)

    def _round(self, grid: Grid, nodes: list[int], server_round: int) -> RoundRecord:
        cfg, started = self.cfg, time.perf_counter()
        sampled = sample_clients(cfg.seed, server_round, cfg.clients, cfg.fraction_fit, 0)
        train = self._exchange(grid, nodes, self.strategy.configure_train, server_round, sampled)
        self.timings.train += time.perf_counter() - started
        record = RoundRecord(
            round=server_round, clients_sampled=train.sampled, clients_failed=train.failed
        )
        if train.replies:
            tick = time.perf_counter()
            arrays, metrics = self.strategy.aggregate_train(server_round, train.replies)
            self.timings.aggregate += time.perf_counter() - tick
            if arrays is not None:
                self.arrays = arrays
            record.train_loss = _metric(metrics, "train_loss")
            if cfg.evaluates_on_clients:
                self._evaluate_on_clients(grid, nodes, server_round, record)
            record.central_loss, record.central_accuracy = self._central()
        record.round_seconds = time.perf_counter() - started
        self.timings.per_round.append(record.round_seconds)
        self.timings.rounds += record.round_seconds
        return record

    def _evaluate_on_clients(
        self, grid: Grid, nodes: list[int], server_round: int, record: RoundRecord
    ) -> None:
        tick = time.perf_counter()
        sampled = sample_clients(
            self.cfg.seed, server_round, self.cfg.clients, self.cfg.fraction_evaluate, 1
        )
        evaluation = self._exchange(
            grid, nodes, self.strategy.configure_evaluate, server_round, sampled
        )
        if evaluation.replies:
            metrics = self.strategy.aggregate_evaluate(server_round, evaluation.replies)
            record.eval_loss = _metric(metrics, "eval_loss")
            record.eval_accuracy = _metric(metrics, "eval_accuracy")
        self.timings.client_evaluate += time.perf_counter() - tick

    def _exchange(
        self, grid: Grid, nodes: list[int], configure, server_round: int, pids: list[int]
    ) -> _Exchange:
        """Let the strategy build its messages for the sampled nodes, name each one's
        partition, send them, and sort the replies back into partition order."""
        pid_of = {nodes[pid]: pid for pid in pids}
        view = _SampledGrid(grid, list(pid_of))
        messages = [
            _with_partition(m, pid_of[m.metadata.dst_node_id])
            for m in configure(server_round, self.arrays, ConfigRecord(), view)
        ]
        replies = self._send_and_receive(grid, messages)
        ok = sorted(
            (r for r in replies if not r.has_error()), key=lambda r: pid_of[r.metadata.src_node_id]
        )
        return _Exchange(replies=ok, sampled=len(messages), failed=len(messages) - len(ok))

    def _send_and_receive(self, grid: Grid, messages: list[Message]) -> list[Message]:
        """Grid.send_and_receive, but stoppable and polling faster; replies that have not
        come by --round-timeout are left behind (and counted as failures)."""
        waiting = set(grid.push_messages(messages))
        deadline = time.monotonic() + self.cfg.round_timeout
        replies: list[Message] = []
        while waiting and time.monotonic() < deadline:
            self._check_stop()
            arrived = list(grid.pull_messages(waiting))
            replies.extend(arrived)
            waiting.difference_update(m.metadata.reply_to_message_id for m in arrived)
            if waiting:
                time.sleep(POLL_SECONDS)
        return replies

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
        """All virtual nodes, in a fixed order: position i carries partition i."""
        deadline = time.monotonic() + patience
        while len(nodes := sorted(grid.get_node_ids())) < self.cfg.clients:
            if time.monotonic() > deadline:
                raise RunAborted(f"only {len(nodes)} of {self.cfg.clients} nodes registered")
            self._check_stop()
            time.sleep(POLL_SECONDS)
        return nodes


def _metric(metrics, name: str) -> float | None:
    if metrics is None or name not in metrics:
        return None
    return float(metrics[name])


def build_server_app(loop: FederatedLoop) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        loop.run(grid)

    return app
