"""Split the training set across clients with flwr-datasets partitioners, seeded.

Only the labels take part: the partitioner sees a two-column table (label, row index)
whose rows were shuffled with the run's seed, so every partitioner, IID included,
gives different splits for different seeds and the same split for the same seed.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedsim.config import ConfigError, RunConfig, flag

_CACHE_VERSION = "1"


@dataclass(frozen=True)
class Partitions:
    """Row indices into the training set: each client's training and held-out part."""

    train: tuple[np.ndarray, ...]
    val: tuple[np.ndarray, ...]

    @property
    def sizes(self) -> list[int]:
        return [len(t) + len(v) for t, v in zip(self.train, self.val, strict=True)]


def _partitioner(cfg: RunConfig):
    from flwr_datasets.partitioner import (
        DirichletPartitioner,
        IidPartitioner,
        PathologicalPartitioner,
        ShardPartitioner,
    )

    n = cfg.clients
    if cfg.partition == "iid":
        return IidPartitioner(num_partitions=n)
    if cfg.partition == "dirichlet":
        return DirichletPartitioner(
            num_partitions=n,
            partition_by="label",
            alpha=cfg.alpha,
            min_partition_size=0,
            self_balancing=False,
            seed=cfg.seed,
        )
    if cfg.partition == "pathological":
        return PathologicalPartitioner(
            num_partitions=n,
            partition_by="label",
            num_classes_per_partition=cfg.classes_per_client,
            class_assignment_mode="first-deterministic",
            seed=cfg.seed,
        )
    return ShardPartitioner(
        num_partitions=n,
        partition_by="label",
        num_shards_per_partition=cfg.shards_per_client,
        seed=cfg.seed,
    )


def partition_indices(labels: np.ndarray, cfg: RunConfig) -> Partitions:
    """Each client's row indices, split into a training part and a held-out part."""
    from datasets import Dataset

    if cfg.clients > len(labels):
        raise ConfigError(
            flag("clients"),
            f"must be ≤ {len(labels)} (the training examples available), got {cfg.clients}",
        )
    order = np.random.default_rng(cfg.seed).permutation(len(labels))
    table = Dataset.from_dict({"label": np.asarray(labels)[order], "row": order})
    partitioner = _partitioner(cfg)
    partitioner.dataset = table
    train, val = [], []
    for pid in range(cfg.clients):
        rows = np.asarray(partitioner.load_partition(pid)["row"], dtype=np.int64)
        if len(rows) == 0:
            raise ConfigError(
                flag("clients"),
                f"client {pid} got no data under --partition {cfg.partition}; "
                "use fewer clients or a less skewed partition",
            )
        rows = np.random.default_rng([cfg.seed, pid]).permutation(rows)
        held_out = held_out_count(len(rows), cfg.val_fraction)
        val.append(rows[:held_out])
        train.append(rows[held_out:])
    return Partitions(train=tuple(train), val=tuple(val))


def cached_partition_indices(
    labels: np.ndarray, cfg: RunConfig, data_key: str, cache: Path
) -> Partitions:
    """`partition_indices`, stored under `cache` by everything that decides it, so a
    repeated setting skips flwr-datasets (and its import) altogether."""
    settings = (
        _CACHE_VERSION,
        data_key,
        cfg.clients,
        cfg.partition,
        cfg.alpha,
        cfg.classes_per_client,
        cfg.shards_per_client,
        cfg.seed,
        cfg.val_fraction,
    )
    key = hashlib.sha256(repr(settings).encode()).hexdigest()[:24]
    path = cache / "partitions" / f"{key}.npz"
    if path.exists():
        return _load(path)
    parts = partition_indices(labels, cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}-{os.getpid()}.npz")
    np.savez(
        tmp,
        train=np.concatenate(parts.train),
        train_sizes=[len(t) for t in parts.train],
        val=np.concatenate(parts.val),
        val_sizes=[len(v) for v in parts.val],
    )
    os.replace(tmp, path)
    return parts


def _load(path: Path) -> Partitions:
    with np.load(path) as stored:

        def split(name: str) -> tuple[np.ndarray, ...]:
            bounds = np.cumsum(stored[f"{name}_sizes"])[:-1]
            return tuple(np.split(stored[name], bounds))

        return Partitions(train=split("train"), val=split("val"))


def held_out_count(size: int, fraction: float) -> int:
    """At least one held-out example when asked for any, never the whole partition."""
    if fraction == 0 or size < 2:
        return 0
    return min(size - 1, max(1, round(size * fraction)))


def label_counts(labels: np.ndarray, parts: Partitions, num_classes: int) -> np.ndarray:
    """(clients, classes) matrix of how many examples of each label each client holds."""
    return np.stack(
        [
            np.bincount(labels[np.concatenate([t, v])], minlength=num_classes)
            for t, v in zip(parts.train, parts.val, strict=True)
        ]
    )
