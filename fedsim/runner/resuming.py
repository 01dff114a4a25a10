"""What --resume reads back and checks before a run goes on: config.json, the user's
own code as it was, and the bookkeeping a run killed after its last round never did.
(The checkpoint and the clients' memories: fedsim.runner.checkpoint.)"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from fedsim import algorithms
from fedsim.ground import imports
from fedsim.ground.config import RunConfig
from fedsim.ground.errors import ConfigError, Diverged, RunAborted
from fedsim.ground.files import CLIENTS_CSV, CONFIG_JSON, GROUPS_CSV, MODEL, ROUNDS_CSV
from fedsim.ground.option import flag
from fedsim.outputs.files import ModelSaver, truncate_rows
from fedsim.outputs.records import GROUP_COLUMNS, Timings, client_columns, round_columns
from fedsim.runner import folders, options
from fedsim.runner.checkpoint import Checkpointer, Saved, open_memories
from fedsim.simulation.state import RunState

# statuses of runs that ended for a reason, kept by --resume unless it trains further
ENDED = {kind.status: kind for kind in (RunAborted, Diverged)}

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


def finish_bookkeeping(
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
    truncate_results(run_dir, cfg, done)
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


def truncate_results(run_dir: Path, cfg: RunConfig, last_round: int) -> None:
    """rounds.csv, clients.csv and groups.csv as of `last_round` (the checkpoint's):
    later rows go."""
    personal = algorithms.is_personal(cfg)
    truncate_rows(run_dir / ROUNDS_CSV, last_round, round_columns(personal))
    truncate_rows(run_dir / CLIENTS_CSV, last_round, client_columns(personal))
    if (run_dir / GROUPS_CSV).exists():
        truncate_rows(run_dir / GROUPS_CSV, last_round, GROUP_COLUMNS)
