"""Running an experiment: its runs one after another in `<results-dir>/<experiment>/`.

Complete runs (config.json says so) are skipped and unfinished ones (interrupted,
killed, failed) go on where they stopped, so an interrupted sweep is finished by running
it again. A run that ended for a reason (aborted, diverged) is not run again but said,
and the experiment exits 1 for it (`--resume` its folder to try again). Every run's
data, partitions and folder are checked before the first one starts: a bad grid leaves
nothing behind. summary.csv and the plots are redrawn at the end.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fedsim.flower import ray_instance
from fedsim.front import plots
from fedsim.front.summary import completed_rounds, is_complete
from fedsim.front.sweep import Experiment
from fedsim.ground import interrupts
from fedsim.ground.config import RunConfig
from fedsim.ground.errors import ConfigError, RunAborted, RunEnded
from fedsim.ground.files import CONFIG_JSON, LABEL_COUNTS_CSV
from fedsim.ground.option import NOT_COMPARED, flag
from fedsim.learning.partition import label_counts
from fedsim.runner import folders, lifecycle, options, resuming
from fedsim.runner.assembly import Seams
from fedsim.runner.inputs import prepare


@dataclass(frozen=True)
class _Planned:
    cfg: RunConfig
    folder: Path
    # "new", "complete", "unfinished", "trained" (killed after its last round: only its
    # bookkeeping is left), or how it ended (ENDED)
    state: str
    counts: pd.DataFrame  # examples of each label per client
    reason: str = ""  # why it ended, for an ended run


def changed_settings(cfg: RunConfig, stored: dict) -> list[str]:
    """How a stored run's config (config.json's `config`) differs from `cfg` in what
    could change its numbers: options that apply, other than where and with what a run
    computes (the data is compared by its content key instead). An option newer than
    the run was at its default there: unused options change nothing."""
    there = options.from_document(stored).flat()
    here = cfg.flat()
    return [
        f"{name} {there.get(name)!r} there, {here.get(name)!r} here"
        for name in options.every()
        if name not in options.with_role(NOT_COMPARED)
        and options.applies(cfg, name)
        and there.get(name) != here.get(name)
    ]


def _state(cfg: RunConfig, folder: Path, data_key: str) -> tuple[str, str]:
    """What is in the run's folder already (and why it ended, if it did); a run with
    other settings is an error. A folder fedsim left half-made is taken over."""
    if not folder.exists() or (folder.is_dir() and folders.half_made(folder)):
        return "new", ""
    try:
        document = json.loads((folder / CONFIG_JSON).read_text())
        stored = document["config"]
    except (OSError, ValueError, KeyError) as error:
        raise ConfigError(
            flag("name"),
            f"{folder} is in the way: not a fedsim run ({error.__class__.__name__}), "
            "move it or choose another --name for the experiment",
        ) from None
    changed = changed_settings(cfg, stored)
    if document.get("data_cache_key") != data_key:
        changed.append("other data")
    if changed:
        raise ConfigError(
            flag("name"),
            f"{folder} holds a run with other settings ({'; '.join(changed)}), "
            "choose another --name (or --results-dir) for this experiment",
        )
    status = document.get("status", "")
    if status in resuming.ENDED:
        return status, str(document.get("error"))
    if is_complete(folder, document):
        return "complete", ""
    resuming.changed_code(document, cfg, accept=False)  # refused before any run starts
    if completed_rounds(folder) == list(range(cfg.rounds + 1)):
        return "trained", ""  # no Ray for it (if its checkpoint is behind, it starts one)
    return "unfinished", ""


def _check(experiment: Experiment) -> list[_Planned]:
    """Data, partitions, profiles, trackers and run folder of every run, before any of
    them starts (fedsim.runner.inputs.prepare, as each run itself does)."""
    planned = []
    for cfg in experiment.runs:
        inputs = prepare(cfg)
        dataset, labels = inputs.dataset, np.asarray(inputs.dataset.train_y)
        counts = pd.DataFrame(
            label_counts(labels, inputs.partitions, len(dataset.classes)),
            columns=list(dataset.classes),
        ).rename_axis("client")
        folder = experiment.folder / cfg.name
        state, reason = _state(cfg, folder, dataset.key)
        planned.append(_Planned(cfg, folder, state, counts, reason))
    return planned


def run_experiment(experiment: Experiment, seams: Seams | None = None) -> None:
    """Run what is not complete yet, then summarise and plot. A run that aborts (every
    client failing) is reported and the sweep goes on; the exit status tells."""
    total, failed = len(experiment.runs), []
    print(
        f"fedsim: experiment {experiment.folder}: {total} runs "
        "(checking their data, partitions and folders first)",
        flush=True,
    )
    planned = _check(experiment)
    todo = [run for run in planned if run.state in ("new", "unfinished")]
    with interrupts.deferred():  # a started Ray is always one the finally stops
        ray = ray_instance.RayStarter(todo[0].cfg) if todo else None  # one Ray for every run
    try:
        for index, run in enumerate(planned, 1):
            head = f"fedsim: run {index} of {total}: {run.cfg.name}"
            if run.state == "complete":
                print(f"{head} is complete, skipped", flush=True)
            elif run.state in resuming.ENDED:
                print(
                    f"{head} ended {run.state} ({run.reason}); not run again "
                    f"(--resume {run.folder} to try)",
                    flush=True,
                )
                failed.append(run.cfg.name)
            else:
                going_on = run.state != "new"
                print(head + (" (unfinished, going on)" if going_on else ""), flush=True)
                try:
                    if going_on:
                        lifecycle.resume(run.folder, ray=ray, seams=seams)
                    else:
                        lifecycle.run(run.cfg, ray=ray, seams=seams)
                except RunEnded as error:
                    print(f"error: {run.cfg.name}: {error}", file=sys.stderr, flush=True)
                    failed.append(run.cfg.name)
            if run.folder.is_dir():
                run.counts.to_csv(run.folder / LABEL_COUNTS_CSV)
    finally:
        if ray is not None:
            ray.stop()
    plots.report(experiment.folder, experiment.runs[0].target_accuracy)  # one per experiment
    if failed:
        raise RunAborted(f"{len(failed)} of {total} runs did not complete: {', '.join(failed)}")
