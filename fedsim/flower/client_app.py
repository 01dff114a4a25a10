"""The Flower ClientApp: the clients of one bundle, trained or evaluated one after
another, or trained at once where --vectorize says so (fedsim.learning.together).

Its handlers are bound to the run's config and a `ClientData` handle (the simulation
engine hands apps an empty run_config). A message carries a bundle of virtual clients
(fedsim.flower.bundles); each one runs the algorithm's client side (fedsim.algorithms)
with its own seeds (fedsim.ground.streams), and fails alone: a client that raises is
reported as failed and the next one runs. Each actor process keeps one model object
and one zero-copy view of the data, so a client costs a weight load, gathering its
rows, and the training itself; memory stays flat however many clients it serves.
"""

from __future__ import annotations

import faulthandler
import logging
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message, MessageType
from flwr.clientapp import ClientApp

from fedsim import algorithms
from fedsim.algorithms import privacy
from fedsim.algorithms.base import Algorithm
from fedsim.algorithms.context import ClientContext, ClientResult, tensors_of
from fedsim.flower import bundles
from fedsim.flower.actor_log import log_calls
from fedsim.flower.bundles import BundleInfo
from fedsim.flower.sizing import Cluster
from fedsim.ground import messages, streams
from fedsim.ground.choices import CLIENT_FIXED
from fedsim.ground.config import RunConfig
from fedsim.ground.messages import ClientOutcome, ClientTask
from fedsim.learning import models, together
from fedsim.learning.data import DecodedDataset, read_cached
from fedsim.learning.partition import Partitions
from fedsim.learning.tasks import Task
from fedsim.learning.trainers import OneAtATime, Together, Trained, Trainer

# This module is what actors import first: keep Flower's per-actor chatter (such as
# "Manually terminating ClientAppActor" at shutdown) off the console; fedsim counts and
# reports client failures itself.
logging.getLogger("flwr").setLevel(logging.ERROR)

WATCHDOG_GRACE = 5.0  # seconds past its deadline after which a stuck client process ends
RECORDS_KEPT = 3  # converted records a process keeps: the model, a control variate, a memory


class ClientData(Protocol):
    """Where a client finds its data; `key` names it within one process."""

    key: str

    def load(self) -> tuple[np.ndarray, np.ndarray, Partitions, Task]:
        """The training examples (the cache's arrays), their labels, the partitions,
        and the data's task (what the model is built for)."""
        ...


@dataclass(frozen=True)
class RayObjectData:
    """Data the driver put into Ray's object store once; actors read it zero-copy."""

    key: str
    examples: Any  # ray.ObjectRef to the training examples
    labels: Any  # ray.ObjectRef to the labels
    partitions: Any  # ray.ObjectRef to Partitions
    task: Task

    def load(self) -> tuple[np.ndarray, np.ndarray, Partitions, Task]:
        import ray

        examples, labels, partitions = ray.get([self.examples, self.labels, self.partitions])
        return examples, labels, partitions, self.task


@dataclass(frozen=True)
class MappedData:
    """A one-machine run's data: each actor memory-maps the decoded cache's files, as
    the driver does, so the operating system keeps one copy for all of them (Ray's
    object store would hold a second, and the driver would have read every example to
    put it there). Only the partitions, small, go through the object store."""

    key: str
    folder: str  # the decoded cache folder (fedsim.learning.data)
    partitions: Any  # ray.ObjectRef to Partitions
    task: Task  # the driver's, pixel statistics included (measured once)

    def load(self) -> tuple[np.ndarray, np.ndarray, Partitions, Task]:
        import ray

        dataset = read_cached(Path(self.folder))
        return dataset.train_x, dataset.train_y, ray.get(self.partitions), self.task


_PROCESS_CACHE: dict[tuple, Any] = {}


def _per_process(key: tuple, make: Callable[[], Any]) -> Any:
    """Memoise within this actor process: actors outlive messages, apps do not."""
    if key not in _PROCESS_CACHE:
        _PROCESS_CACHE[key] = make()
    return _PROCESS_CACHE[key]


def client_device(cfg: RunConfig) -> torch.device:
    """CUDA if this client was given a GPU: by --gpus-per-client, or (left to auto) by
    Ray, or outside Ray (a SuperNode) by simply seeing one. A client given a GPU it
    cannot see (a logical GPU, a broken driver) trains on CPU after one warning line."""
    wants_gpu = _given_gpu() if cfg.gpus_per_client is None else bool(cfg.gpus_per_client)
    if wants_gpu and not torch.cuda.is_available():
        _per_process(
            ("cpu-fallback-warning",),
            lambda: print(
                "fedsim: warning: this client was given a GPU but sees no CUDA device; "
                "training on CPU",
                file=sys.stderr,
                flush=True,
            ),
        )
    return torch.device("cuda" if wants_gpu and torch.cuda.is_available() else "cpu")


def _given_gpu() -> bool:
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return bool(ray.get_gpu_ids())
    return torch.cuda.is_available()


class ClientProcess:
    """What one actor process keeps between messages: its torch threads, the run's
    algorithm, one model per device and a view of the data."""

    def __init__(self, cfg: RunConfig, data: ClientData) -> None:
        torch.set_num_threads(max(1, int(cfg.cpus_per_client)))  # Ray does not cap torch
        self.cfg = cfg
        self.algorithm: Algorithm = algorithms.build(cfg)
        self.device = client_device(cfg)
        self.examples, self.labels, self.partitions, self.task = data.load()
        self.model = models.build_model(cfg.model, task=self.task).to(self.device)
        # --vectorize: whether this process trains a bundle's clients at once; chosen
        # once, for every bundle it trains
        together_here = (
            together.wanted(cfg.vectorize, self.device)
            and self.algorithm.why_not_together() is None
            and together.why_not(self.model, self.algorithm.settings()) is None
        )
        self.trainer: Trainer = (Together if together_here else OneAtATime)(self.model, self.task)
        self._converted: OrderedDict[int, tuple[ArrayRecord, dict[str, torch.Tensor]]]
        self._converted = OrderedDict()

    def tensors(self, record: ArrayRecord) -> dict[str, torch.Tensor]:
        """The record's tensors, converted once per record: every client of a bundle
        usually gets the same model (and SCAFFOLD's control variate), and a client
        reads its own memory more than once. The last few records are kept, each with
        its conversion: an id alone could be reused by a later record."""
        key = id(record)
        kept = self._converted.pop(key, None)
        if kept is None or kept[0] is not record:
            kept = (record, tensors_of(record))
        self._converted[key] = kept
        while len(self._converted) > RECORDS_KEPT:
            self._converted.popitem(last=False)
        return kept[1]

    def load_model(self, arrays: ArrayRecord) -> torch.nn.Module:
        """The process's model holding `arrays`."""
        self.model.load_state_dict(self.tensors(arrays))
        return self.model

    def load_data(self, pid: int, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """One client's split as (examples, int64 labels) on the device, gathered on
        each call from the process's zero-copy view of the data (tens of milliseconds
        for the seed job's 22,500 images). Keeping each client's copy would grow an
        actor by every client it ever serves."""
        rows = self.partitions.train(pid) if split == "train" else self.partitions.val(pid)
        return (
            torch.from_numpy(self.examples[rows]).to(self.device),
            torch.from_numpy(np.asarray(self.labels[rows], dtype=np.int64)).to(self.device),
        )


def train_clients(
    process: ClientProcess,
    tasks: list[ClientTask],
    info: BundleInfo,
    trainer: Trainer | None = None,
) -> list[ClientOutcome]:
    """A bundle's training, its clients in one group (Algorithm.train_group) over the
    process's trainer (or `trainer`): one outcome per task, in order; never raises. A
    client that drops out or comes too late does not train; one that fails, fails
    alone (should the algorithm fail the whole group, each client is trained again
    alone)."""
    trainer = trainer or process.trainer
    outcomes: dict[int, ClientOutcome] = {}
    live: list[tuple[int, ClientContext]] = []
    for position, task_ in enumerate(tasks):
        if early := _before_training(process, MessageType.TRAIN, task_, info):
            outcomes[position] = early
        else:
            live.append((position, _context(process, task_, info)))
    try:
        done = process.algorithm.train_group([ctx for _, ctx in live], trainer)
    except Exception:
        alone = OneAtATime(process.model, process.task)
        done = [_train_alone(process, ctx, alone) for _, ctx in live]
    for (position, ctx), trained in zip(live, done, strict=True):
        if trained.error is not None:
            error = f"{type(trained.error).__name__}: {trained.error}"
            outcomes[position] = ClientOutcome(
                ctx.pid, messages.FAILED, trained.seconds, error=error
            )
        else:
            _protect(process.cfg, ctx, trained.made)
            outcomes[position] = _succeeded(ctx.pid, trained.made, trained.seconds)
    return [outcomes[position] for position in range(len(tasks))]


def _train_alone(process: ClientProcess, ctx: ClientContext, alone: OneAtATime) -> Trained:
    tick = time.perf_counter()
    try:
        (trained,) = process.algorithm.train_group([ctx], alone)
    except Exception as error:
        return Trained(None, error, time.perf_counter() - tick)
    return trained


def evaluate_client(process: ClientProcess, task_: ClientTask, info: BundleInfo) -> ClientOutcome:
    """One client's evaluation, in the process that serves it; never raises."""
    if early := _before_training(process, MessageType.EVALUATE, task_, info):
        return early
    started = time.perf_counter()
    try:
        result = process.algorithm.evaluate(_context(process, task_, info))
    except Exception as error:  # the client fails alone; the bundle goes on
        seconds = time.perf_counter() - started
        return ClientOutcome(
            task_.pid, messages.FAILED, seconds, error=f"{type(error).__name__}: {error}"
        )
    return _succeeded(task_.pid, result, time.perf_counter() - started)


def _before_training(
    process: ClientProcess, message_type: str, task_: ClientTask, info: BundleInfo
) -> ClientOutcome | None:
    """A client that does not run: the server stopped waiting, or (training) it drops
    out this round, decided by the seed alone."""
    cfg, pid = process.cfg, task_.pid
    if info.deadline and time.time() > info.deadline:
        return ClientOutcome(pid, messages.TIMEOUT)
    if message_type == MessageType.TRAIN and cfg.client_failure_rate:
        dropout = streams.client_rng(cfg.seed, info.server_round, pid, streams.DROPOUT)
        if dropout.random() < cfg.client_failure_rate:
            error = f"client {pid} dropped out in round {info.server_round}"
            return ClientOutcome(pid, messages.DROPOUT, 0.0, error=error)
    return None


def _context(process: ClientProcess, task_: ClientTask, info: BundleInfo) -> ClientContext:
    return ClientContext(
        cfg=process.cfg,
        pid=task_.pid,
        server_round=info.server_round,
        content=task_.content,
        state=task_.state,
        load_model=process.load_model,
        load_data=partial(process.load_data, task_.pid),
        tensors=process.tensors,
        task=process.task,
    )


def _protect(cfg: RunConfig, ctx: ClientContext, result: ClientResult) -> None:
    """What the client does to its reply before it leaves (--dp client-fixed: clip)."""
    if cfg.dp == CLIENT_FIXED:
        privacy.clip_reply(ctx.content, result.content)


def _succeeded(pid: int, result: ClientResult, seconds: float) -> ClientOutcome:
    tick = time.perf_counter()
    bytes_up = messages.recorddict_bytes(result.content)
    return ClientOutcome(
        pid,
        messages.OK,
        seconds=seconds,
        bytes_up=bytes_up,
        measured_in=time.perf_counter() - tick,
        content=result.content,
        state=result.state,
    )


@contextmanager
def _watchdog(deadline: float):
    """A client that never returns (a deadlock, an endless loop) must not hold its actor
    forever: past the deadline (plus a grace) the process dumps every thread's stack to
    stderr and exits; Ray restarts the actor and the server has already counted the
    bundle's clients as timed out. faulthandler's timer runs in C, so it fires even
    when the stuck code holds the GIL."""
    if not deadline:
        yield
        return
    faulthandler.dump_traceback_later(
        max(deadline - time.time(), 0.0) + WATCHDOG_GRACE, exit=True, file=sys.stderr
    )
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


def process_for(cfg: RunConfig, data: ClientData) -> ClientProcess:
    """This run's `ClientProcess` in this process, keyed by everything that shapes it.
    An actor serves one run at a time and then the next run of the experiment
    (fedsim.flower.shelf): the previous run's model and data view are dropped,
    not kept for every run it served."""
    key = ("process", data.key, cfg)
    if key not in _PROCESS_CACHE:
        for previous in [k for k in _PROCESS_CACHE if k[0] == "process"]:
            del _PROCESS_CACHE[previous]
    return _per_process(key, lambda: ClientProcess(cfg, data))


# What a client does as its work begins, before fedsim's own (tests make one misbehave
# there, in the bundle's watchdog, as a real fault would: tests/faulty_clients.py)
BeforeClient = Callable[[ClientProcess, str, ClientTask, BundleInfo], None]


def _nothing_first(
    process: ClientProcess, message_type: str, task_: ClientTask, info: BundleInfo
) -> None:
    return None


def handle_bundle(
    cfg: RunConfig, data: ClientData, before: BeforeClient, msg: Message, context: Context
) -> Message:
    process = process_for(cfg, data)
    tasks, info = bundles.unpack_tasks(msg.content)
    message_type = msg.metadata.message_type
    with _watchdog(info.deadline):
        for task_ in tasks:
            before(process, message_type, task_, info)
        if message_type == MessageType.TRAIN:
            outcomes = train_clients(process, tasks, info)
        else:
            outcomes = [evaluate_client(process, task_, info) for task_ in tasks]
    return Message(content=bundles.pack_outcomes(outcomes), reply_to=msg)


def build_client_app(
    cfg: RunConfig, data: ClientData, before: BeforeClient = _nothing_first
) -> ClientApp:
    """The handlers bound to this run. They are module functions under `partial`, not
    closures: Flower pickles the app into every message it hands an actor, and a
    closure is pickled by value, its code with every message (milliseconds of the
    driver's time each, docs/performance.md), a module function by name."""
    app = ClientApp(mods=[log_calls])
    app.train()(partial(handle_bundle, cfg, data, before))
    app.evaluate()(partial(handle_bundle, cfg, data, before))
    return app


def data_for(dataset: DecodedDataset, partitions: Partitions, cluster: Cluster) -> ClientData:
    """On this machine the actors map the decoded cache's files themselves; actors on
    other nodes get the training set through Ray's object store, put there once."""
    import ray

    shared = ray.put(partitions)
    if cluster.started_here:
        return MappedData(dataset.key, str(dataset.folder), shared, dataset.task)
    return RayObjectData(
        key=dataset.key,
        examples=ray.put(np.asarray(dataset.train_x)),
        labels=ray.put(np.asarray(dataset.train_y)),
        partitions=shared,
        task=dataset.task,
    )
