"""One run, end to end: data -> partitions -> Ray -> Flower -> results.

Everything that can be wrong with the input (options, data, partitions, the results
folder, GPUs) is checked before Ray starts, and the run folder is created only once
the run can begin: a bad run leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord

from fedsim import algorithms
from fedsim.algorithms import attacks, privacy
from fedsim.flower import engine
from fedsim.flower.client_app import ClientData, MappedData, RayObjectData, build_client_app
from fedsim.ground.config import RunConfig, flag, validate
from fedsim.ground.errors import ConfigError, Diverged, RunAborted
from fedsim.learning import training
from fedsim.learning.data import DecodedDataset, cache_root, load_cifar
from fedsim.learning.partition import Partitions, cached_partition_indices
from fedsim.outputs import tracking
from fedsim.outputs.records import (
    CLIENT_COLUMNS,
    CSV_COLUMNS,
    CsvRecorder,
    FailureReporter,
    ModelSaver,
    ProgressPrinter,
    Timings,
)
from fedsim.run import folders
from fedsim.run.checkpoint import (
    CHECKPOINT,
    Checkpoint,
    Checkpointer,
    load_checkpoint,
    truncate_rows,
)
from fedsim.simulation.buffered import BufferedSchedule
from fedsim.simulation.client_states import ClientStates
from fedsim.simulation.clock import ClockState
from fedsim.simulation.loop import FederatedLoop, Transport, build_server_app, nodes_needed
from fedsim.simulation.profiles import Profiles, load_profiles

# statuses of runs that ended for a reason, kept by --resume unless it trains further
ENDED = {kind.status: kind for kind in (RunAborted, Diverged)}
ROUNDS_CSV = "rounds.csv"
CLIENTS_CSV = "clients.csv"
CONFIG_JSON = folders.CONFIG_JSON
MODEL = "model.pt"


class CentralEvaluator:
    """Evaluates the global model on the whole test split in the driver process."""

    def __init__(self, cfg: RunConfig, dataset: DecodedDataset) -> None:
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = training.build_model(cfg.model).to(self.device)
        self.images = torch.from_numpy(np.array(dataset.test_x)).to(self.device)
        self.labels = torch.from_numpy(np.array(dataset.test_y)).to(self.device)

    def __call__(self, arrays: ArrayRecord) -> tuple[float, float]:
        self.model.load_state_dict(arrays.to_torch_state_dict())
        return training.evaluate(
            self.model, self.images, self.labels, batch_size=training.CENTRAL_BATCH_SIZE
        )


@dataclass
class RunInputs:
    """What a run needs before Ray starts, all of it already checked."""

    cfg: RunConfig
    dataset: DecodedDataset
    partitions: Partitions
    timings: Timings
    profiles: Profiles


def _prepare(cfg: RunConfig, started: float) -> RunInputs:
    timings = Timings(imports=time.perf_counter() - started)
    profiles = load_profiles(cfg)  # a bad profiles file is refused before the data loads
    tracking.check(cfg)
    tick = time.perf_counter()
    dataset = load_cifar(cfg.data, cache_root())
    timings.data_load = time.perf_counter() - tick
    tick = time.perf_counter()
    labels = np.asarray(dataset.train_y)
    partitions = cached_partition_indices(labels, cfg, dataset.key, cache_root())
    timings.partition = time.perf_counter() - tick
    if cfg.gpus_per_client and engine.private_ray(cfg) and not torch.cuda.is_available():
        raise ConfigError(
            flag("gpus_per_client"),
            f"got {cfg.gpus_per_client:g}, but no GPU is visible here (PyTorch sees no CUDA "
            "device); use 0, or --ray-address a cluster that has GPUs",
        )
    return RunInputs(cfg, dataset, partitions, timings, profiles)


def run(
    cfg: RunConfig,
    started: float | None = None,
    ray: engine.RayStarter | None = None,
    exiting: bool = False,
) -> Path:
    """A fresh run; returns its folder. Ray starts (or `ray` has started) while the
    data is loaded and checked; nothing is written before both are ready. `exiting`:
    the process ends right after (simulate.py's single run), so fedsim's own Ray
    instance and Flower's engine are left to end with it rather than wound down first;
    on a cluster fedsim did not start, the driver still disconnects rather than vanish."""
    started = started or time.perf_counter()
    if Path(cfg.data).expanduser().exists():  # config.json records where the data was
        cfg = cfg.replace(data=str(Path(cfg.data).expanduser().resolve()))
    owned = ray is None
    ray = ray or engine.RayStarter(cfg)
    try:
        inputs = _prepare(cfg, started)
        cluster = _wait_for_ray(ray, inputs)
        with folders.claimed_run_dir(cfg) as run_dir:
            return _execute(inputs, run_dir, started, cluster, None)
    finally:
        if owned and not (exiting and engine.private_ray(cfg)):
            ray.stop()


def resume(
    run_dir: Path,
    rounds: int | None = None,
    started: float | None = None,
    ray: engine.RayStarter | None = None,
) -> Path:
    """Go on with an interrupted run from its last checkpoint (optionally to more rounds).
    A run whose rounds were all done but whose bookkeeping was cut short (killed before
    its final status and model.pt) gets them, without running anything again; one that
    ended for a reason (aborted, diverged) keeps its status unless more rounds are asked
    for. Nothing in the folder changes before the run can go on."""
    started = started or time.perf_counter()
    folders.check_results_dir(run_dir)
    with folders.locked(run_dir, "--resume"):
        document, cfg = _stored(run_dir)
        if rounds is not None:
            cfg = validate(cfg.replace(rounds=rounds))
        checkpoint = None
        if (run_dir / CHECKPOINT).exists():
            checkpoint = load_checkpoint(run_dir / CHECKPOINT)
            _check_algorithm(cfg, checkpoint, run_dir)
            if checkpoint.round >= cfg.rounds:
                _finish_bookkeeping(run_dir, cfg, document, checkpoint)
                return run_dir
        owned = ray is None
        ray = ray or engine.RayStarter(cfg)
        try:
            inputs = _prepare(cfg, started)
            return _execute(inputs, run_dir, started, _wait_for_ray(ray, inputs), checkpoint)
        finally:
            if owned:
                ray.stop()


def _stored(run_dir: Path) -> tuple[dict, RunConfig]:
    """config.json of a run folder, and its config validated again."""
    try:
        document = json.loads((run_dir / CONFIG_JSON).read_text())
        return document, validate(RunConfig(**document["config"]))
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ConfigError("--resume", f"{run_dir} is not a fedsim run folder ({error})") from None


def _check_algorithm(cfg: RunConfig, checkpoint: Checkpoint, run_dir: Path) -> None:
    """The checkpoint's strategy must be the one the run's config builds (a checkpoint
    copied from another run would resume the wrong algorithm)."""
    expected = type(privacy.wrap(cfg, algorithms.build(cfg).strategy())).__name__
    found = type(checkpoint.strategy).__name__
    if found != expected:
        raise ConfigError(
            "--resume",
            f"{run_dir / CHECKPOINT} holds a {found} strategy, but config.json's run "
            f"({cfg.strategy}, --dp {cfg.dp}) uses {expected}: it is another run's checkpoint",
        )


def _finish_bookkeeping(
    run_dir: Path, cfg: RunConfig, document: dict, checkpoint: Checkpoint
) -> None:
    status = document.get("status")
    if status in ENDED:
        raise ENDED[status](
            f"{run_dir} ended {status} after round {checkpoint.round} ({document.get('error')}); "
            f"it has nothing left to resume (--resume with --rounds more than "
            f"{checkpoint.round} trains further)"
        )
    if status == "complete" and (run_dir / MODEL).exists():
        print(f"fedsim: {run_dir} is already complete ({checkpoint.round} rounds)")
        return
    _truncate(run_dir, checkpoint.round)
    ModelSaver(run_dir / MODEL).on_run_end(checkpoint.arrays)
    known = {f.name for f in dataclasses.fields(Timings)}
    timings = Timings(
        **{k: v for k, v in document.get("timings_seconds", {}).items() if k in known}
    )
    extra = {k: v for k, v in document.items() if k not in folders.STATUS_KEYS}
    folders.RunStatus(run_dir, cfg, timings, extra).write("complete", error=None)
    print(
        f"fedsim: {run_dir}: all {checkpoint.round} rounds were done; wrote what the run "
        "had not (model.pt, status complete)"
    )


def _truncate(run_dir: Path, last_round: int) -> None:
    truncate_rows(run_dir / ROUNDS_CSV, last_round, CSV_COLUMNS)
    truncate_rows(run_dir / CLIENTS_CSV, last_round, CLIENT_COLUMNS)


def _wait_for_ray(ray: engine.RayStarter, inputs: RunInputs) -> engine.Cluster:
    cluster = ray.cluster(inputs.cfg)
    inputs.timings.ray_start = ray.seconds  # Ray's own start, mostly hidden behind the data's
    return cluster


def _execute(
    inputs: RunInputs,
    run_dir: Path,
    started: float,
    cluster: engine.Cluster,
    checkpoint: Checkpoint | None,
) -> Path:
    cfg = inputs.cfg
    _truncate(run_dir, checkpoint.round if checkpoint else -1)
    extra = {
        "run_dir": str(run_dir),
        "data_cache_key": inputs.dataset.key,
        "partition_sizes": inputs.partitions.sizes,
        "resumed_from_round": checkpoint.round if checkpoint else None,
        "cluster": cluster.describe(),
        **attacks.describe(cfg),
    }
    status = folders.RunStatus(run_dir, cfg, inputs.timings, extra)
    print(_announce(cfg, run_dir, cluster, checkpoint.round if checkpoint else None), flush=True)
    transport = Transport(cluster.concurrent_clients, cfg.clients_per_message)
    loop = build_loop(inputs, run_dir, checkpoint, transport, status.failures)
    with status.running(started), engine.on_node_lost(status.fail):
        try:
            engine.run_simulation(
                build_server_app(loop),
                build_client_app(cfg, _client_data(inputs, cluster)),
                nodes_needed(cfg, transport, loop.reply_bytes),
                cluster,
                loop.finished,
            )
        except KeyboardInterrupt:
            loop.stop.set()  # the server loop ends at its next poll; Ray goes down after
            raise
        if loop.error is not None:  # the engine may have stopped before it said so
            raise loop.error
    print(f"fedsim: done in {inputs.timings.total:.1f} s -> {run_dir}", flush=True)
    return run_dir


def _announce(cfg: RunConfig, run_dir: Path, cluster: engine.Cluster, resumed: int | None) -> str:
    start = f" (resuming after round {resumed})" if resumed is not None else ""
    resources = cluster.client_resources
    return (
        f"fedsim: {cfg.clients} clients, {cfg.rounds} rounds{start} -> {run_dir}\n"
        f"fedsim: Ray has {cluster.cpus:g} CPUs, {cluster.gpus:g} GPUs; "
        f"{cluster.concurrent_clients} clients run at a time "
        f"({resources['num_cpus']:g} CPU, {resources['num_gpus']:g} GPU each)"
        f"{attacks.announce(cfg)}"
    )


def _client_data(inputs: RunInputs, cluster: engine.Cluster) -> ClientData:
    """On this machine the actors map the decoded cache's files themselves; actors on
    other nodes get the training set through Ray's object store, put there once."""
    import ray

    partitions = ray.put(inputs.partitions)
    if cluster.started_here:
        return MappedData(inputs.dataset.key, str(inputs.dataset.folder), partitions)
    return RayObjectData(
        key=inputs.dataset.key,
        images=ray.put(np.asarray(inputs.dataset.train_x)),
        labels=ray.put(np.asarray(inputs.dataset.train_y)),
        partitions=partitions,
    )


def build_loop(
    inputs: RunInputs,
    run_dir: Path,
    checkpoint: Checkpoint | None,
    transport: Transport,
    failures: FailureReporter,
) -> FederatedLoop:
    """The round loop with its result files; fedsim.flower_app runs it on Flower's grid."""
    cfg = inputs.cfg
    torch.set_num_threads(os.cpu_count() or 1)  # the driver evaluates while clients wait
    if checkpoint is None:
        strategy = privacy.wrap(cfg, algorithms.build(cfg).strategy())
        arrays = ArrayRecord(training.build_model(cfg.model, seed=cfg.seed).state_dict())
        states, clock = ClientStates(), ClockState()
    else:
        strategy, arrays = checkpoint.strategy, checkpoint.arrays
        states, clock = checkpoint.states, checkpoint.clock
    trackers = tracking.trackers(cfg, run_dir)  # before any file: one may still refuse
    callbacks = [
        CsvRecorder(run_dir / ROUNDS_CSV, run_dir / CLIENTS_CSV, inputs.timings),
        Checkpointer(run_dir / CHECKPOINT, strategy, states, clock),
        ProgressPrinter(cfg.rounds),
        failures,
        ModelSaver(run_dir / MODEL),
        *trackers,
    ]
    parts = inputs.partitions
    return FederatedLoop(
        cfg,
        strategy,
        arrays,
        CentralEvaluator(cfg, inputs.dataset),
        callbacks,
        inputs.timings,
        sizes=(parts.train_sizes, parts.val_sizes),
        transport=transport,
        states=states,
        completed=checkpoint.round if checkpoint else None,
        profiles=inputs.profiles,
        clock=clock,
        schedule=BufferedSchedule() if cfg.strategy in algorithms.ASYNCHRONOUS else None,
    )
