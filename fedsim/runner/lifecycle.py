"""One run, end to end, written once: prepare -> claim -> execute -> status.

    prepare(cfg)                      -> RunInputs: data, partitions, profiles, checked
    execute(inputs, run_dir, ...)     -> the round loop on Flower's engine, results written
    run(cfg) / resume(run_dir)        -> the two above with Ray, the folder and its lock

simulate.py, experiments, the Flower App (fedsim.front.flower_app, which brings its own
grid) and the benchmarks all go through here. Everything that can be wrong with the
input (options, model, data, partitions, trackers, the results folder, GPUs) is checked
before the run folder is claimed: a bad run leaves nothing behind. What tests and
benchmarks put in place of fedsim's own parts (the client app, the central evaluation)
they pass as Seams; nothing replaces a private function.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedsim import algorithms
from fedsim.algorithms import attacks, privacy
from fedsim.algorithms.base import Algorithm
from fedsim.flower import engine
from fedsim.flower.client_app import ClientData, MappedData, RayObjectData, build_client_app
from fedsim.flower.exchange import FlowerExchange, Progress, Transport, nodes_needed
from fedsim.flower.server_app import build_server_app
from fedsim.ground import imports, interrupts, messages
from fedsim.ground.config import RunConfig, flag, sample_count
from fedsim.ground.errors import ConfigError, Diverged, RunAborted
from fedsim.ground.files import (
    CHECKPOINT,
    CLIENT_STATES,
    CLIENTS_CSV,
    CONFIG_JSON,
    MODEL,
    ROUNDS_CSV,
    cache_root,
)
from fedsim.learning import models, together, training
from fedsim.learning.data import DecodedDataset, Shape, load_images, read_column
from fedsim.learning.partition import NATURAL, Partitions, cached_partition_indices
from fedsim.outputs import tracking
from fedsim.outputs.callbacks import RoundCallback
from fedsim.outputs.console import FailureReporter, LiveStatus, ProgressPrinter
from fedsim.outputs.files import CsvRecorder, ModelSaver, truncate_rows
from fedsim.outputs.records import CLIENT_COLUMNS, CSV_COLUMNS, Timings
from fedsim.runner import folders, options
from fedsim.runner.checkpoint import Checkpointer, Saved, load_checkpoint, open_memories
from fedsim.simulation.buffered import BufferedSchedule
from fedsim.simulation.client_states import ClientStates
from fedsim.simulation.loop import CentralEvaluate, Population, RoundLoop
from fedsim.simulation.profiles import Profiles, check_profiles, load_profiles
from fedsim.simulation.sampling import sample_size
from fedsim.simulation.state import RunState

# How long a stopped run waits for its loop to close its files (the loop looks for the
# stop every few hundredths of a second, unless it is evaluating the model centrally)
STOP_GRACE_SECONDS = 5.0

# statuses of runs that ended for a reason, kept by --resume unless it trains further
ENDED = {kind.status: kind for kind in (RunAborted, Diverged)}


class CentralEvaluator:
    """Evaluates the global model on the whole test split in the driver process."""

    def __init__(self, cfg: RunConfig, dataset: DecodedDataset) -> None:
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = models.build_model(cfg.model, shape=dataset.shape).to(self.device)
        self.images = torch.from_numpy(np.array(dataset.test_x)).to(self.device)
        self.labels = torch.from_numpy(np.array(dataset.test_y)).to(self.device)

    def __call__(self, arrays: ArrayRecord) -> tuple[float, float]:
        self.model.load_state_dict(arrays.to_torch_state_dict())
        return training.evaluate(
            self.model, self.images, self.labels, batch_size=training.CENTRAL_BATCH_SIZE
        )


@dataclass(frozen=True)
class Seams:
    """The parts of a run that tests and benchmarks replace: how the client app is built
    (a misbehaving client, Flower's quickstart client) and the central evaluation."""

    client_app: Callable[[RunConfig, ClientData], ClientApp] = build_client_app
    evaluator: Callable[[RunConfig, DecodedDataset], CentralEvaluate] = CentralEvaluator


@dataclass
class RunInputs:
    """What a run needs before Ray starts, all of it already checked."""

    cfg: RunConfig
    dataset: DecodedDataset
    partitions: Partitions
    timings: Timings
    profiles: Profiles
    facts: dict[str, object] = dataclasses.field(default_factory=dict)  # for config.json


def prepare(cfg: RunConfig, started: float | None = None) -> RunInputs:
    """Check what can only be checked against the machine and load what the run reads:
    the profiles, the trackers' targets, the data and its partitions
    (decoded and split once per machine, then cached), the GPUs asked for."""
    started = started or time.perf_counter()
    timings = Timings(imports=time.perf_counter() - started)
    check_profiles(cfg)  # a bad profiles file is refused before the data loads
    tracking.check(cfg)
    dataset, partitions = load_data(cfg, timings)  # more clients than examples: refused
    if partitions.clients != cfg.clients:  # --partition natural: one client per value
        cfg = options.validate(cfg.replace(clients=partitions.clients))
    profiles = load_profiles(cfg)  # a profile per client, once their count is known to fit
    model = models.check_model(cfg.model, dataset.shape)  # one that cannot fit: one line
    check_server_side(cfg)
    check_driver_memory(cfg, model)
    if cfg.gpus_per_client and engine.private_ray(cfg) and not torch.cuda.is_available():
        raise ConfigError(
            flag("gpus_per_client"),
            f"got {cfg.gpus_per_client:g}, but no GPU is visible here (PyTorch sees no CUDA "
            "device); use 0, or --ray-address a cluster that has GPUs",
        )
    return RunInputs(cfg, dataset, partitions, timings, profiles)


def check_server_side(cfg: RunConfig) -> None:
    """The algorithm's server side, built once before anything runs (a user's algorithm
    may lack it, or raise): it must be a Flower Strategy that checkpoint.pt can hold."""
    name = cfg.strategy
    try:
        strategy = privacy.private(cfg, algorithms.build(cfg).strategy())
    except NotImplementedError:
        raise ConfigError(
            "--strategy",
            f"{name} has no server side: define strategy(), returning a Flower "
            "Strategy (fedsim.algorithms.base.Algorithm)",
        ) from None
    except Exception as error:
        raise ConfigError(
            "--strategy", f"{name}.strategy() raises {type(error).__name__}: {error}"
        ) from None
    if not isinstance(strategy, Strategy):
        raise ConfigError(
            "--strategy",
            f"{name}.strategy() returns a {type(strategy).__name__}, not a Flower "
            "Strategy (flwr.serverapp.strategy)",
        )
    try:
        pickle.dumps(strategy)
    except Exception as error:  # a lambda, a closure, an open file among its attributes
        raise ConfigError(
            "--strategy",
            f"{name}'s strategy cannot be saved in checkpoint.pt ({type(error).__name__}: "
            f"{error}); keep its state in plain attributes, not lambdas or local functions",
        ) from None


def check_driver_memory(cfg: RunConfig, model: torch.nn.Module) -> None:
    """The most client updates the driver holds at once (a round's sample, or FedBuff's
    buffer), each a model, must fit in this machine's memory: a size that cannot is
    refused before anything is allocated for it."""
    buffered = algorithms.build(cfg).buffered()
    held = buffered.size if buffered else sample_size(cfg, cfg.sampled_per_round)
    update = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if held * update > memory:
        option = flag("buffer_size") if buffered else flag("clients")
        raise ConfigError(
            option,
            f"the driver would hold {held:,} client updates of {update / 2**20:.1f} MiB at "
            f"once ({held * update / 2**30:,.0f} GiB), more than this machine's "
            f"{memory / 2**30:.0f} GiB of memory",
        )


def load_data(cfg: RunConfig, timings: Timings | None = None) -> tuple[DecodedDataset, Partitions]:
    """The run's data (decoded once per machine, then mapped from the cache) and its
    partitions (split once per setting, then cached): the same in the driver, in a
    Flower App's client process and in the benchmarks' plain loop."""
    timings = timings or Timings()
    tick = time.perf_counter()
    dataset = load_images(cfg.data, cache_root()).normalized(cfg.normalize)
    timings.data_load = time.perf_counter() - tick
    tick = time.perf_counter()
    labels = np.asarray(dataset.train_y)
    groups = read_column(cfg.data, cfg.partition_column) if cfg.partition == NATURAL else None
    partitions = cached_partition_indices(labels, cfg, dataset.key, cache_root(), groups)
    timings.partition = time.perf_counter() - tick
    return dataset, partitions


def run(
    cfg: RunConfig,
    started: float | None = None,
    ray: engine.RayStarter | None = None,
    exiting: bool = False,
    seams: Seams = Seams(),
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
    with interrupts.deferred():  # a started Ray is always one the finally stops
        ray = ray or engine.RayStarter(cfg)
    try:
        inputs = prepare(cfg, started)
        cluster = _wait_for_ray(ray, inputs)
        with folders.claimed_run_dir(inputs.cfg) as run_dir:
            return execute(inputs, run_dir, started, cluster, None, seams)
    finally:
        if owned and not (exiting and engine.private_ray(cfg)):
            ray.stop()


def resume(
    run_dir: Path,
    rounds: int | None = None,
    started: float | None = None,
    ray: engine.RayStarter | None = None,
    seams: Seams = Seams(),
    accept_changed_code: bool = False,
) -> Path:
    """Go on with an interrupted run from its last checkpoint (optionally to more rounds).
    A run whose rounds were all done but whose bookkeeping was cut short (killed before
    its final status and model.pt) gets them, without running anything again; one that
    ended for a reason (aborted, diverged) keeps its status unless more rounds are asked
    for. The user's own code must be what the run began with (`accept_changed_code`:
    go on with the changed code, which config.json then records). Nothing in the folder
    changes before the run can go on."""
    started = started or time.perf_counter()
    if not run_dir.is_dir():
        what = "is a file, not a run folder" if run_dir.exists() else "does not exist"
        raise ConfigError("--resume", f"{run_dir} {what}")
    with folders.locked(run_dir, "--resume"):
        document, cfg = stored_config(run_dir, "--resume")
        if rounds is not None:
            cfg = options.validate(cfg.replace(rounds=rounds))
        changes = changed_code(document, cfg, accept_changed_code)
        state = saved = None
        if (run_dir / CHECKPOINT).exists():
            state, saved = load_checkpoint(run_dir)
            _check_algorithm(cfg, state, run_dir)
            if state.completed >= cfg.rounds:
                _finish_bookkeeping(run_dir, cfg, document, state, saved)
                return run_dir
            open_memories(run_dir, state, saved)
        owned = ray is None
        with interrupts.deferred():
            ray = ray or engine.RayStarter(cfg)
        try:
            inputs = prepare(cfg, started)
            if changes:
                earlier = document.get(CODE_CHANGES, [])
                inputs.facts[CODE_CHANGES] = earlier + [
                    {**change, "after_round": state.completed if state else None}
                    for change in changes
                ]
            return execute(inputs, run_dir, started, _wait_for_ray(ray, inputs), state, seams)
        finally:
            if owned:
                ray.stop()


CODE_CHANGES = "user_code_changes"  # config.json: changed code a resume was told to accept


def changed_code(document: dict, cfg: RunConfig, accept: bool) -> list[dict[str, str]]:
    """The user's own modules (--model, --strategy) whose text differs from what
    config.json recorded when the run began: refused (the resumed rounds would train
    other code, or fail every client), or, with `accept`, returned for config.json."""
    recorded = document.get("user_code", {})
    changes = []
    for option, path in imports.named(cfg).items():
        was, now = recorded.get(option, {}), imports.source(path)
        if "sha256" not in was or was.get("sha256") == now.get("sha256"):
            continue
        file = now.get("file") or was.get("file")
        if not accept:
            raise ConfigError(
                "--resume",
                f"{file} ({flag(option)} {path}) changed since the run began (SHA-256 "
                f"{was['sha256'][:12]}… then, {str(now.get('sha256'))[:12]}… now): the "
                "resumed rounds would train other code; restore it, or go on with the "
                "change on purpose (--accept-changed-code, recorded in config.json)",
            )
        changes.append(
            {
                "option": option,
                "file": str(file),
                "was": was["sha256"],
                "now": str(now.get("sha256")),
            }
        )
    return changes


def stored_config(run_dir: Path, option: str) -> tuple[dict, RunConfig]:
    """config.json of a run folder, and its config validated again."""
    try:
        document = json.loads((run_dir / CONFIG_JSON).read_text())
        return document, options.from_document(document["config"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ConfigError(option, f"{run_dir} is not a fedsim run folder ({error})") from None


def _check_algorithm(cfg: RunConfig, state: RunState, run_dir: Path) -> None:
    """The checkpoint's strategy must be the one the run's config builds (a checkpoint
    copied from another run would resume the wrong algorithm)."""
    expected = privacy.kind(privacy.private(cfg, algorithms.build(cfg).strategy()))
    found = privacy.kind(state.strategy)
    if found != expected:
        raise ConfigError(
            "--resume",
            f"{run_dir / CHECKPOINT} holds a {found} strategy, but config.json's run "
            f"({cfg.strategy}, --dp {cfg.dp}) uses {expected}: it is another run's checkpoint",
        )


def _finish_bookkeeping(
    run_dir: Path, cfg: RunConfig, document: dict, state: RunState, saved: Saved
) -> None:
    status, done = document.get("status"), state.completed
    if status in ENDED:
        raise ENDED[status](
            f"{run_dir} ended {status} after round {done} ({document.get('error')}); it has "
            f"nothing left to resume (--resume with --rounds more than {done} trains further)"
        )
    if status == "complete" and (run_dir / MODEL).exists():
        print(f"fedsim: {run_dir} is already complete ({done} rounds)")
        return
    open_memories(run_dir, state, saved)
    _truncate(run_dir, done)
    ModelSaver(run_dir / MODEL).on_run_end(state.arrays)
    Checkpointer(run_dir, state, cfg.client_states).on_run_end(state.arrays)
    known = {f.name for f in dataclasses.fields(Timings)}
    timings = Timings(
        **{k: v for k, v in document.get("timings_seconds", {}).items() if k in known}
    )
    extra = {k: v for k, v in document.items() if k not in folders.STATUS_KEYS}
    folders.RunStatus(run_dir, cfg, timings, extra).write("complete", error=None)
    print(
        f"fedsim: {run_dir}: all {done} rounds were done; wrote what the run "
        "had not (model.pt, status complete)"
    )


def _truncate(run_dir: Path, last_round: int) -> None:
    truncate_rows(run_dir / ROUNDS_CSV, last_round, CSV_COLUMNS)
    truncate_rows(run_dir / CLIENTS_CSV, last_round, CLIENT_COLUMNS)


def _wait_for_ray(ray: engine.RayStarter, inputs: RunInputs) -> engine.Cluster:
    cluster = ray.cluster(inputs.cfg)
    inputs.timings.ray_start = ray.seconds  # Ray's own start, mostly hidden behind the data's
    return cluster


def run_facts(inputs: RunInputs, run_dir: Path, resumed: int | None) -> dict[str, object]:
    """What config.json says of a run beyond its options and status."""
    return {
        "run_dir": str(run_dir),
        "data_cache_key": inputs.dataset.key,
        "partition_sizes": inputs.partitions.sizes,
        "data_shape": inputs.dataset.shape.describe(),
        "resumed_from_round": resumed,
        **attacks.describe(inputs.cfg),
        **_user_code(inputs.cfg),
        **inputs.facts,
    }


def _user_code(cfg: RunConfig) -> dict[str, object]:
    """The user's own model or algorithm, where it came from (none: nothing said)."""
    found = {name: imports.source(value) for name, value in imports.named(cfg).items()}
    return {"user_code": found} if found else {}


def execute(
    inputs: RunInputs,
    run_dir: Path,
    started: float,
    cluster: engine.Cluster,
    state: RunState | None,
    seams: Seams = Seams(),
) -> Path:
    """The rounds on Flower's simulation engine, from `state` (a checkpoint's) or from
    the start, with config.json's status around them."""
    cfg = inputs.cfg
    resumed = state.completed if state else None
    _truncate(run_dir, resumed if resumed is not None else -1)
    together_facts = clients_together(cfg, cluster, inputs.dataset.shape)
    facts = {**run_facts(inputs, run_dir, resumed), "cluster": cluster.describe()}
    status = folders.RunStatus(run_dir, cfg, inputs.timings, facts | together_facts)
    print(_announce(cfg, run_dir, cluster, resumed), flush=True)
    if why := together_facts.get("one_at_a_time"):
        print(f"fedsim: --vectorize {cfg.vectorize}, but clients train one at a time: {why}")
    algorithm = algorithms.build(cfg)
    live = LiveStatus(cfg.rounds)  # on a terminal: the round's progress, in place
    loop = build_loop(
        inputs, run_dir, state, status.failures, algorithm, seams.evaluator, (status, live)
    )
    transport = Transport(cluster.concurrent_clients, cfg.clients_per_message)
    reply_bytes = model_bytes(loop)

    def serve(grid: Grid) -> None:
        loop.run(exchange_on(grid, loop, transport, live.progress))

    with status.running(started), engine.on_node_lost(status.fail, status.path), live:
        try:
            engine.run_simulation(
                build_server_app(serve),
                seams.client_app(cfg, _client_data(inputs, cluster)),
                nodes_needed(_phase_sizes(cfg, algorithm, reply_bytes), transport),
                cluster,
                loop.finished,
            )
        except KeyboardInterrupt:
            loop.stop.set()  # the loop ends at the exchange's next look; Ray goes down after
            loop.finished.wait(STOP_GRACE_SECONDS)  # its files closed, the store merged
            raise
        if loop.error is not None:  # the engine may have stopped before it said so
            raise loop.error
    print(f"fedsim: done in {inputs.timings.total:.1f} s -> {run_dir}", flush=True)
    return run_dir


def clients_together(cfg: RunConfig, cluster: engine.Cluster, shape: Shape) -> dict[str, object]:
    """Whether a bundle's clients train at once (config.json's `clients_together`), and
    why not where --vectorize asks for it but the algorithm or the model cannot."""
    on_gpu = bool(cluster.client_resources["num_gpus"])
    if not together.wanted(cfg.vectorize, torch.device("cuda" if on_gpu else "cpu")):
        return {"clients_together": False}
    why = algorithms.build(cfg).why_not_together()
    why = why or together.why_not(models.build_model(cfg.model, shape=shape))
    return {"clients_together": why is None} | ({"one_at_a_time": why} if why else {})


def model_bytes(loop: RoundLoop) -> int:
    """A training reply's size: one model, as Flower serializes it."""
    return messages.recorddict_bytes(RecordDict({messages.ARRAYS: loop.state.arrays}))


def exchange_on(
    grid: Grid, loop: RoundLoop, transport: Transport, progress: Progress | None = None
) -> FlowerExchange:
    """The loop's exchange over Flower's `grid` (one node per client on the Deployment
    Engine, where node i holds partition i), telling `progress` as outcomes arrive."""
    wanted = loop.cfg.clients if transport.one_node_per_client else 1
    return FlowerExchange(
        grid, transport, model_bytes(loop), loop.cfg.round_timeout, loop.stop, wanted, progress
    )


def _phase_sizes(cfg: RunConfig, algorithm: Algorithm, reply_bytes: int) -> list[tuple[int, int]]:
    """The most clients each phase of a round sends at once, with the bytes of each of
    their replies: a round's sample (over-selected), or FedBuff's clients in flight."""
    buffered = algorithm.buffered()
    wanted = buffered.concurrency if buffered else sample_size(cfg, cfg.sampled_per_round)
    sizes = {min(cfg.clients, wanted): reply_bytes}
    if cfg.evaluates_on_clients:
        sizes.setdefault(sample_count(cfg.clients, cfg.fraction_evaluate), 0)
        if cfg.evaluate_all_every:
            sizes.setdefault(cfg.clients, 0)
    return list(sizes.items())


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
        return MappedData(
            inputs.dataset.key, str(inputs.dataset.folder), partitions, inputs.dataset.shape
        )
    return RayObjectData(
        key=inputs.dataset.key,
        images=ray.put(np.asarray(inputs.dataset.train_x)),
        labels=ray.put(np.asarray(inputs.dataset.train_y)),
        partitions=partitions,
        shape=inputs.dataset.shape,
    )


def build_loop(
    inputs: RunInputs,
    run_dir: Path,
    state: RunState | None,
    failures: FailureReporter,
    algorithm: Algorithm,
    evaluator: Callable[[RunConfig, DecodedDataset], CentralEvaluate] = CentralEvaluator,
    outputs: Sequence[RoundCallback] = (),
) -> RoundLoop:
    """The round loop with its result files, from `state` or from the start (the
    strategy wrapped for --dp, then the initial model: the order the seeds are drawn in,
    fedsim.ground.streams)."""
    cfg = inputs.cfg
    torch.set_num_threads(os.cpu_count() or 1)  # the driver evaluates while clients wait
    if state is None:
        strategy = privacy.wrap(cfg, algorithm.strategy())
        model = models.build_model(cfg.model, seed=cfg.seed, shape=inputs.dataset.shape)
        arrays = ArrayRecord(model.state_dict())
        state = RunState(arrays, strategy, ClientStates(run_dir / CLIENT_STATES))
    trackers = tracking.trackers(cfg, run_dir)  # before any file: one may still refuse
    callbacks = [
        CsvRecorder(run_dir / ROUNDS_CSV, run_dir / CLIENTS_CSV, inputs.timings),
        Checkpointer(run_dir, state, cfg.client_states),
        ProgressPrinter(cfg.rounds),
        failures,
        ModelSaver(run_dir / MODEL),
        *trackers,
        *outputs,  # config.json's timings so far, the status line
    ]
    parts = inputs.partitions
    population = Population(parts.train_sizes, parts.val_sizes, inputs.profiles)
    buffered = algorithm.buffered()
    schedule = BufferedSchedule(buffered, cfg, population) if buffered else None
    central = evaluator(cfg, inputs.dataset)
    return RoundLoop(cfg, state, population, central, callbacks, inputs.timings, schedule)
