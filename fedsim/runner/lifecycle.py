"""One run, end to end, written once: prepare -> claim -> execute -> status.

    prepare(cfg)                      -> RunInputs: data, partitions, profiles, checked
    execute(inputs, run_dir, ...)     -> the round loop on Flower's engine, results written
    run(cfg) / resume(run_dir)        -> the two above with Ray, the folder and its lock

simulate.py, fedsim.run, experiments and the benchmarks all go through here (the Flower
App, which brings its own grid, assembles the same loop: fedsim.runner.assembly).
Everything that can be wrong with the input is checked before the run folder is
claimed (fedsim.runner.inputs): a bad run leaves nothing behind.
"""

from __future__ import annotations

import time
from pathlib import Path

from fedsim import algorithms
from fedsim.algorithms import attacks, privacy
from fedsim.flower import client_app, engine, node_watch, ray_instance
from fedsim.flower.sizing import Cluster, private_ray
from fedsim.ground import interrupts
from fedsim.ground.config import RunConfig
from fedsim.ground.errors import ConfigError
from fedsim.ground.files import CHECKPOINT
from fedsim.runner import folders, options
from fedsim.runner.assembly import NO_SEAMS, Seams, assemble, clients_together, run_facts
from fedsim.runner.checkpoint import load_checkpoint, open_memories
from fedsim.runner.inputs import RunInputs, prepare
from fedsim.runner.resuming import (
    CODE_CHANGES,
    changed_code,
    finish_bookkeeping,
    stored_config,
    truncate_results,
)
from fedsim.simulation.state import RunState

# How long a stopped run waits for its loop to close its files (the loop looks for the
# stop every few hundredths of a second, unless it is evaluating the model centrally)
STOP_GRACE_SECONDS = 5.0


def run(
    cfg: RunConfig,
    started: float | None = None,
    ray: ray_instance.RayStarter | None = None,
    exiting: bool = False,
    seams: Seams | None = None,
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
        ray = ray or ray_instance.RayStarter(cfg)
    try:
        inputs = prepare(cfg, started)
        cluster = _wait_for_ray(ray, inputs)
        with folders.claimed_run_dir(inputs.cfg) as run_dir:
            return execute(inputs, run_dir, started, cluster, None, seams)
    finally:
        if owned and not (exiting and private_ray(cfg)):
            ray.stop()


def resume(
    run_dir: Path,
    rounds: int | None = None,
    started: float | None = None,
    ray: ray_instance.RayStarter | None = None,
    seams: Seams | None = None,
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
            fresh = privacy.private(cfg, algorithms.build(cfg).strategy())  # as it began
            state, saved = load_checkpoint(run_dir, fresh, privacy.kind(fresh))
            if state.completed >= cfg.rounds:
                finish_bookkeeping(run_dir, cfg, document, state, saved)
                return run_dir
            open_memories(run_dir, state, saved)
        owned = ray is None
        with interrupts.deferred():
            ray = ray or ray_instance.RayStarter(cfg)
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


def _wait_for_ray(ray: ray_instance.RayStarter, inputs: RunInputs) -> Cluster:
    cluster = ray.cluster(inputs.cfg)
    inputs.timings.ray_start = ray.seconds  # Ray's own start, mostly hidden behind the data's
    return cluster


def execute(
    inputs: RunInputs,
    run_dir: Path,
    started: float,
    cluster: Cluster,
    state: RunState | None,
    seams: Seams | None = None,
) -> Path:
    """The rounds on Flower's simulation engine, from `state` (a checkpoint's) or from
    the start, with config.json's status around them."""
    cfg = inputs.cfg
    resumed = state.completed if state else None
    truncate_results(run_dir, cfg, resumed if resumed is not None else -1)
    together_facts = clients_together(cfg, inputs.algorithm, inputs.dataset.task, cluster)
    facts = {**run_facts(inputs, run_dir, resumed), "cluster": cluster.describe()}
    seams = seams or NO_SEAMS
    run = assemble(inputs, run_dir, state, facts | together_facts, seams)
    print(_announce(cfg, run_dir, cluster, resumed), flush=True)
    if why := together_facts.get("one_at_a_time"):
        print(f"fedsim: --vectorize {cfg.vectorize}, but clients train one at a time: {why}")
    data = client_app.data_for(inputs.dataset, inputs.partitions, cluster)
    status, loop = run.status, run.loop
    with status.running(started), node_watch.on_node_lost(status.fail, status.path), run.live:
        try:
            engine.run_loop(
                run.loop_run(), seams.client_app(cfg, data), cluster, cfg.clients_per_message
            )
        except KeyboardInterrupt:
            loop.stop.set()  # the loop ends at the exchange's next look; Ray goes down after
            loop.finished.wait(STOP_GRACE_SECONDS)  # its files closed, the store merged
            raise
        if loop.error is not None:  # the engine may have stopped before it said so
            raise loop.error
    print(f"fedsim: done in {inputs.timings.total:.1f} s -> {run_dir}", flush=True)
    return run_dir


def _announce(cfg: RunConfig, run_dir: Path, cluster: Cluster, resumed: int | None) -> str:
    start = f" (resuming after round {resumed})" if resumed is not None else ""
    resources = cluster.client_resources
    return (
        f"fedsim: {cfg.clients} clients, {cfg.rounds} rounds{start} -> {run_dir}\n"
        f"fedsim: Ray has {cluster.cpus:g} CPUs, {cluster.gpus:g} GPUs; "
        f"{cluster.concurrent_clients} clients run at a time "
        f"({resources['num_cpus']:g} CPU, {resources['num_gpus']:g} GPU each)"
        f"{attacks.announce(cfg)}"
    )
