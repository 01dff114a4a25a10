"""Split the training set across clients with flwr-datasets partitioners, seeded.

Only the labels take part, in an order shuffled with the run's seed (a non-IID
partitioner sees them as a two-column table: label, row index), so every partition,
IID included, differs between seeds and is the same for the same seed.

IID needs no label table: flwr-datasets' IidPartitioner gives contiguous slices of the
shuffled rows, which is `np.array_split` (tested against it), so an IID run imports
neither `datasets` nor flwr-datasets (whose package imports seaborn and scipy: seconds of a
cold start).

Any other partitioner's assignment is read once for all clients (flwr-datasets' own
`load_partition` selects one client's rows from the table per call: 35 s for 50,000
clients), and kept as one flat row array with offsets, so 50,000 clients cost two
arrays, not 100,000 small ones, in the cache, in Ray's object store and in each actor.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.ground import insides, streams
from fedsim.ground.config import RunConfig, core_options
from fedsim.ground.errors import ConfigError
from fedsim.ground.option import SPLITS, flag

_CACHE_VERSION = "2"


@dataclass(frozen=True)
class Partitions:
    """Each client's training and held-out rows: `train_rows[train_offsets[i]:
    train_offsets[i + 1]]` are client i's training rows (likewise for val)."""

    train_rows: np.ndarray
    train_offsets: np.ndarray
    val_rows: np.ndarray
    val_offsets: np.ndarray

    @classmethod
    def from_lists(cls, train: list[np.ndarray], val: list[np.ndarray]) -> Partitions:
        def flat(parts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
            offsets = np.zeros(len(parts) + 1, dtype=np.int64)
            np.cumsum([len(p) for p in parts], out=offsets[1:])
            rows = np.concatenate(parts) if parts else np.zeros(0, np.int64)
            return rows.astype(np.int64, copy=False), offsets

        return cls(*flat(train), *flat(val))

    @property
    def clients(self) -> int:
        return len(self.train_offsets) - 1

    def map(self, rows: np.ndarray) -> Partitions:
        """These partitions of a subset of the data (`rows` of it), as rows of the whole."""
        return Partitions(
            rows[self.train_rows], self.train_offsets, rows[self.val_rows], self.val_offsets
        )

    def train(self, pid: int) -> np.ndarray:
        return self.train_rows[self.train_offsets[pid] : self.train_offsets[pid + 1]]

    def val(self, pid: int) -> np.ndarray:
        return self.val_rows[self.val_offsets[pid] : self.val_offsets[pid + 1]]

    @property
    def train_sizes(self) -> np.ndarray:
        return np.diff(self.train_offsets)

    @property
    def val_sizes(self) -> np.ndarray:
        return np.diff(self.val_offsets)

    @property
    def sizes(self) -> list[int]:
        return (self.train_sizes + self.val_sizes).tolist()


def _dirichlet(cfg: RunConfig):
    from flwr_datasets.partitioner import DirichletPartitioner

    return DirichletPartitioner(
        num_partitions=cfg.clients,
        partition_by="label",
        alpha=cfg.alpha,
        min_partition_size=cfg.min_partition_size,
        self_balancing=cfg.dirichlet_balance,
        seed=cfg.seed,
    )


def _pathological(cfg: RunConfig):
    from flwr_datasets.partitioner import PathologicalPartitioner

    return PathologicalPartitioner(
        num_partitions=cfg.clients,
        partition_by="label",
        num_classes_per_partition=cfg.classes_per_client,
        class_assignment_mode="first-deterministic",
        seed=cfg.seed,
    )


def _shard(cfg: RunConfig):
    from flwr_datasets.partitioner import ShardPartitioner

    return ShardPartitioner(
        num_partitions=cfg.clients,
        partition_by="label",
        num_shards_per_partition=cfg.shards_per_client,
        seed=cfg.seed,
    )


def _natural(cfg: RunConfig):
    from flwr_datasets.partitioner import NaturalIdPartitioner

    return NaturalIdPartitioner(partition_by=GROUP)


NATURAL = "natural"  # one client per value of the data's --partition-column
GROUP = "group"  # that column, in the table a partitioner sees

# --partition's choices: flwr-datasets' partitioner for each, IID split by fedsim itself
PARTITIONERS: dict[str, Callable[[RunConfig], Any] | None] = {
    "iid": None,  # contiguous slices of the shuffled rows, as IidPartitioner's (_assignment)
    "dirichlet": _dirichlet,
    "pathological": _pathological,
    "shard": _shard,
    NATURAL: _natural,
}


def _assignment(
    labels: np.ndarray, order: np.ndarray, cfg: RunConfig, groups: np.ndarray | None = None
) -> list[np.ndarray]:
    """Every client's rows of the training set (shuffled by `order`), read once.

    IidPartitioner's `load_partition` is `Dataset.shard(contiguous=True)`: contiguous
    slices whose first `len % n` are one row longer, which is `np.array_split`. The
    others compute their whole assignment when first asked for anything (here:
    `num_partitions`) and keep it, positions in their `dataset` (which ShardPartitioner
    sorts by label first): what their `load_partition` selects, read once through
    fedsim.ground.insides (a private attribute of flwr-datasets 0.6.1);
    tests/test_partition.py checks the result against `load_partition`, client by client.
    """
    build = PARTITIONERS[cfg.partition]
    if build is None:
        return np.array_split(order.astype(np.int64, copy=False), cfg.clients)
    from datasets import Dataset

    partitioner = build(cfg)
    table = {"label": np.asarray(labels)[order], "row": order}
    if groups is not None:
        table[GROUP] = groups[order]
    partitioner.dataset = Dataset.from_dict(table)
    assigned = insides.partition_rows(partitioner, natural=groups is not None)
    rows = np.asarray(partitioner.dataset["row"], dtype=np.int64)
    return [rows[np.asarray(assigned[pid], dtype=np.int64)] for pid in range(cfg.clients)]


def partition_indices(
    labels: np.ndarray, cfg: RunConfig, groups: np.ndarray | None = None
) -> Partitions:
    """Each client's row indices, split into a training part and a held-out part;
    `groups` (--partition natural) names each row's client, and cfg.clients must be
    the number of distinct names."""
    if groups is not None and len(groups) != len(labels):
        raise ConfigError(
            flag("partition_column"), f"has {len(groups)} values for {len(labels)} examples"
        )
    if cfg.clients > len(labels):
        raise ConfigError(
            flag("clients"),
            f"must be ≤ {len(labels)} (the training examples available), got {cfg.clients}",
        )
    classes = len(np.unique(labels))
    if cfg.partition == "pathological" and cfg.classes_per_client > classes:
        raise ConfigError(
            flag("classes_per_client"),
            f"got {cfg.classes_per_client}, but the data has {classes} classes",
        )
    shards = cfg.clients * cfg.shards_per_client
    if cfg.partition == "shard" and shards > len(labels):
        raise ConfigError(
            flag("shards_per_client"),
            f"{cfg.clients} clients × {cfg.shards_per_client} shards need {shards} examples "
            f"or more, the training set has {len(labels)}",
        )
    order = streams.partition_order(cfg.seed, len(labels))
    try:
        assigned = _assignment(labels, order, cfg, groups)
    except (ValueError, ZeroDivisionError) as error:  # flwr-datasets' checks: no split found
        raise ConfigError(
            flag("partition"), f"{cfg.partition} cannot split the data ({error})"
        ) from None
    train, val = [], []
    for pid, rows in enumerate(assigned):
        if len(rows) == 0:
            raise ConfigError(
                flag("clients"),
                f"client {pid} got no data under --partition {cfg.partition}; "
                "use fewer clients or a less skewed partition",
            )
        if len(rows) > 1:  # (a generator per client costs seconds for 50,000 of one row)
            rows = streams.client_rows_rng(cfg.seed, pid).permutation(rows)
        held_out = held_out_count(len(rows), cfg.val_fraction)
        val.append(rows[:held_out])
        train.append(rows[held_out:])
    return Partitions.from_lists(train, val)


def cache_key(cfg: RunConfig, data_key: str) -> str:
    """Everything that decides a partition: the data and the options tagged SPLITS."""
    splits = [name for name, option in core_options().items() if SPLITS in option.roles]
    settings = (_CACHE_VERSION, data_key, *(getattr(cfg, name) for name in splits))
    return hashlib.sha256(repr(settings).encode()).hexdigest()[:24]


def cached_partition_indices(
    labels: np.ndarray,
    cfg: RunConfig,
    data_key: str,
    cache: Path,
    groups: np.ndarray | None = None,
) -> Partitions:
    """`partition_indices`, stored under `cache` by everything that decides it, so a
    repeated setting skips flwr-datasets (and its import) altogether. A stored file that
    does not read back whole and consistent is computed again. With `groups` (--partition
    natural) there are as many clients as distinct values, whatever cfg.clients says."""
    if groups is not None:
        cfg = cfg.replace(clients=len(np.unique(groups)))
    path = cache / "partitions" / f"{cache_key(cfg, data_key)}.npz"
    if path.exists() and (stored := _load(path, cfg.clients, len(labels))) is not None:
        return stored
    parts = partition_indices(labels, cfg, groups)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}-{os.getpid()}.npz")
        np.savez(
            tmp,
            train=parts.train_rows,
            train_offsets=parts.train_offsets,
            val=parts.val_rows,
            val_offsets=parts.val_offsets,
        )
        os.replace(tmp, path)
    except OSError as error:
        raise ConfigError("FEDSIM_CACHE", f"cannot write the partition cache: {error}") from None
    return parts


def _load(path: Path, clients: int, examples: int) -> Partitions | None:
    try:
        with np.load(path) as stored:
            parts = Partitions(
                stored["train"], stored["train_offsets"], stored["val"], stored["val_offsets"]
            )
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    rows = np.concatenate([parts.train_rows, parts.val_rows])
    consistent = (
        parts.clients == clients
        and len(parts.val_offsets) == clients + 1
        and parts.train_offsets[-1] == len(parts.train_rows)
        and parts.val_offsets[-1] == len(parts.val_rows)
        and (len(rows) == 0 or (rows.min() >= 0 and rows.max() < examples))
    )
    return parts if consistent else None


def held_out_count(size: int, fraction: float) -> int:
    """At least one held-out example when asked for any, never the whole partition."""
    if fraction == 0 or size < 2:
        return 0
    return min(size - 1, max(1, round(size * fraction)))


def label_counts(labels: np.ndarray, parts: Partitions, num_classes: int) -> np.ndarray:
    """(clients, classes) matrix of how many examples of each label each client holds."""
    counts = np.zeros((parts.clients, num_classes), dtype=np.int64)
    for rows, offsets in (
        (parts.train_rows, parts.train_offsets),
        (parts.val_rows, parts.val_offsets),
    ):
        owner = np.repeat(np.arange(parts.clients), np.diff(offsets))
        np.add.at(counts, (owner, labels[rows]), 1)
    return counts
