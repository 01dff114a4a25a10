"""One round loop, assembled once for every way a run starts: simulate.py and fedsim.run
(fedsim.runner.lifecycle) and the Flower App (fedsim.front.flower_app) alike. The loop
gets its state (from the start or a checkpoint), its outputs as callbacks (the CSVs,
the checkpoint, config.json's status, the console, the trackers), its population and
its central evaluation; what tests and benchmarks put in place of fedsim's own parts
(the client app, the central evaluation) comes as Seams, so nothing replaces a private
function.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from flwr.app import ArrayRecord, RecordDict
from flwr.clientapp import ClientApp

from fedsim.algorithms import attacks, privacy
from fedsim.algorithms.base import Algorithm
from fedsim.flower.client_app import ClientData, build_client_app
from fedsim.flower.engine import LoopRun
from fedsim.flower.sizing import Cluster
from fedsim.ground import imports, messages
from fedsim.ground.config import RunConfig, sample_count
from fedsim.ground.files import CLIENT_STATES, CLIENTS_CSV, GROUPS_CSV, MODEL, ROUNDS_CSV
from fedsim.learning import models, together
from fedsim.learning.data import DecodedDataset
from fedsim.learning.tasks import Task
from fedsim.learning.training import CentralEvaluator
from fedsim.outputs import tracking
from fedsim.outputs.console import LiveStatus, ProgressPrinter
from fedsim.outputs.files import CsvRecorder, ModelSaver
from fedsim.runner import folders
from fedsim.runner.checkpoint import Checkpointer
from fedsim.runner.inputs import RunInputs
from fedsim.simulation.buffered import BufferedSchedule
from fedsim.simulation.client_states import ClientStates
from fedsim.simulation.loop import CentralEvaluate, RoundLoop
from fedsim.simulation.phase import Population
from fedsim.simulation.sampling import sample_size
from fedsim.simulation.state import RunState


@dataclass(frozen=True)
class Seams:
    """The parts of a run that tests and benchmarks replace: how the client app is built
    (a misbehaving client, Flower's quickstart client) and the central evaluation."""

    client_app: Callable[[RunConfig, ClientData], ClientApp] = build_client_app
    evaluator: Callable[[RunConfig, DecodedDataset], CentralEvaluate] = CentralEvaluator


NO_SEAMS = Seams()  # fedsim's own parts throughout


@dataclass(frozen=True)
class Assembled:
    """A run's round loop with its config.json status and its console status line."""

    loop: RoundLoop
    status: folders.RunStatus
    live: LiveStatus

    def loop_run(self) -> LoopRun:
        """What Flower's engine needs to carry the loop's messages (fedsim.flower.engine)."""
        loop, cfg = self.loop, self.loop.cfg
        reply_bytes = model_bytes(loop.state)
        return LoopRun(
            run=loop.run,
            stop=loop.stop,
            finished=loop.finished,
            clients=cfg.clients,
            round_timeout=cfg.round_timeout,
            reply_bytes=reply_bytes,
            phase_sizes=phase_sizes(cfg, loop.schedule, reply_bytes),
            progress=self.live.progress,
        )


def assemble(
    inputs: RunInputs,
    run_dir: Path,
    state: RunState | None,
    facts: dict[str, object],
    seams: Seams = NO_SEAMS,
) -> Assembled:
    """The round loop with its result files, from `state` or from the start (the
    strategy wrapped for --dp, then the initial model: the order the seeds are drawn in,
    fedsim.ground.streams)."""
    cfg, algorithm = inputs.cfg, inputs.algorithm
    torch.set_num_threads(os.cpu_count() or 1)  # the driver evaluates while clients wait
    if state is None:
        strategy = privacy.wrap(cfg, algorithm.strategy())
        model = models.build_model(cfg.model, seed=cfg.seed, task=inputs.dataset.task)
        arrays = ArrayRecord(model.state_dict())
        state = RunState(arrays, strategy, ClientStates(run_dir / CLIENT_STATES))
    status = folders.RunStatus(run_dir, cfg, inputs.timings, facts)
    live = LiveStatus(cfg.rounds)  # on a terminal: the round's progress, in place
    trackers = tracking.trackers(cfg, run_dir)  # before any file: one may still refuse
    callbacks = [
        CsvRecorder(
            run_dir / ROUNDS_CSV,
            run_dir / CLIENTS_CSV,
            inputs.timings,
            run_dir / GROUPS_CSV,
            personal=algorithm.personal,
        ),
        Checkpointer(run_dir, state, cfg.client_states),
        ProgressPrinter(cfg.rounds),
        status.failures,
        ModelSaver(run_dir / MODEL),
        *trackers,
        status,  # config.json's timings so far
        live,
    ]
    parts = inputs.partitions
    population = Population(parts.train_sizes, parts.val_sizes, inputs.profiles)
    buffered = algorithm.buffered()
    schedule = BufferedSchedule(buffered, cfg, population) if buffered else None
    central = seams.evaluator(cfg, inputs.dataset)
    loop = RoundLoop(
        cfg,
        state,
        population,
        central,
        callbacks,
        inputs.timings,
        schedule,
        personal=algorithm.personal,
        held_out=algorithm.held_out(),
    )
    return Assembled(loop, status, live)


def model_bytes(state: RunState) -> int:
    """A training reply's size: one model, as Flower serializes it."""
    return messages.recorddict_bytes(RecordDict({messages.ARRAYS: state.arrays}))


def phase_sizes(
    cfg: RunConfig, schedule: BufferedSchedule | None, reply_bytes: int
) -> list[tuple[int, int]]:
    """The most clients each phase of a round sends at once, with the bytes of each of
    their replies: a round's sample (over-selected), or FedBuff's clients in flight."""
    wanted = schedule.buffer.concurrency if schedule else sample_size(cfg, cfg.sampled_per_round)
    sizes = {min(cfg.clients, wanted): reply_bytes}
    if cfg.evaluates_on_clients:
        sizes.setdefault(sample_count(cfg.clients, cfg.fraction_evaluate), 0)
        if cfg.evaluate_all_every:
            sizes.setdefault(cfg.clients, 0)
    return list(sizes.items())


def run_facts(inputs: RunInputs, run_dir: Path, resumed: int | None) -> dict[str, object]:
    """What config.json says of a run beyond its options and status."""
    return {
        "run_dir": str(run_dir),
        "data_cache_key": inputs.dataset.key,
        "partition_sizes": inputs.partitions.sizes,
        "data_shape": inputs.dataset.task.describe(),
        **({"groups": list(inputs.dataset.groups)} if inputs.dataset.groups else {}),
        **({"data_notes": inputs.dataset.notes} if inputs.dataset.notes else {}),
        "resumed_from_round": resumed,
        **attacks.describe(inputs.cfg),
        **_user_code(inputs.cfg),
        **inputs.facts,
    }


def _user_code(cfg: RunConfig) -> dict[str, object]:
    """The user's own model or algorithm, where it came from (none: nothing said)."""
    found = {name: imports.source(value) for name, value in imports.named(cfg).items()}
    return {"user_code": found} if found else {}


def clients_together(
    cfg: RunConfig, algorithm: Algorithm, task: Task, cluster: Cluster
) -> dict[str, object]:
    """Whether a bundle's clients train at once (config.json's `clients_together`), and
    why not where --vectorize asks for it but the algorithm or the model cannot."""
    on_gpu = bool(cluster.client_resources["num_gpus"])
    if not together.wanted(cfg.vectorize, torch.device("cuda" if on_gpu else "cpu")):
        return {"clients_together": False}
    why = algorithm.why_not_together()
    why = why or together.why_not(models.build_model(cfg.model, task=task), algorithm.settings())
    return {"clients_together": why is None} | ({"one_at_a_time": why} if why else {})
