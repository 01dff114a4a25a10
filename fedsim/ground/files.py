"""The names of what a run and an experiment leave on disk, each defined once.

docs/results.md describes what is in each file.
"""

from __future__ import annotations

import os
from pathlib import Path

ROUNDS_CSV = "rounds.csv"  # a row per round
CLIENTS_CSV = "clients.csv"  # a row per client per phase per round
GROUPS_CSV = "groups.csv"  # a row per group of the test split per round (data with groups)
CONFIG_JSON = "config.json"  # the options, versions, timings and the status
MODEL = "model.pt"  # the final global model's state dict
CHECKPOINT = "checkpoint.pt"  # the last completed round, for --resume
CLIENT_STATES = "client_states.sqlite"  # clients' memories (SCAFFOLD's, FedDyn's), for --resume
SUMMARY_CSV = "summary.csv"  # an experiment's row per run
LABEL_COUNTS_CSV = "label_counts.csv"  # an experiment run's examples of each label per client


def cache_root() -> Path:
    """This machine's fedsim cache (decoded data, partitions, code kept by value):
    $FEDSIM_CACHE, else $XDG_CACHE_HOME/fedsim, else ~/.cache/fedsim."""
    if os.environ.get("FEDSIM_CACHE"):
        return Path(os.environ["FEDSIM_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fedsim"


def temporary(name: str) -> str:
    """The name a file is written under before it is renamed into place (atomic_write)."""
    return f".{name}.tmp"


def is_temporary(name: str) -> bool:
    return name.startswith(".") and name.endswith(".tmp")
