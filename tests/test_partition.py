"""Partitioning through flwr-datasets: sizes, seeds, label skew, held-out splits."""

from __future__ import annotations

import numpy as np
import pytest

from fedsim.config import ConfigError, RunConfig
from fedsim.partition import (
    cached_partition_indices,
    held_out_count,
    label_counts,
    partition_indices,
)

LABELS = np.random.default_rng(0).integers(0, 10, size=5000)


def _all_rows(parts) -> np.ndarray:
    return np.concatenate(
        [np.concatenate([t, v]) for t, v in zip(parts.train, parts.val, strict=True)]
    )


@pytest.mark.parametrize("partition", ["iid", "dirichlet", "pathological", "shard"])
def test_partitions_are_disjoint_and_cover_what_they_claim(partition: str) -> None:
    parts = partition_indices(LABELS, RunConfig(clients=10, partition=partition))
    rows = _all_rows(parts)
    assert len(parts.train) == len(parts.val) == 10
    assert len(rows) == len(set(rows.tolist()))  # no row given to two clients
    assert rows.min() >= 0 and rows.max() < len(LABELS)
    if partition in ("iid", "dirichlet"):
        assert len(rows) == len(LABELS)  # these two hand out every row


def test_iid_sizes_are_equal_and_labels_balanced() -> None:
    parts = partition_indices(LABELS, RunConfig(clients=5, partition="iid"))
    assert parts.sizes == [1000] * 5
    counts = label_counts(LABELS, parts, 10)
    assert counts.min() > 60  # ~100 of each label per client


def test_same_seed_same_split_other_seed_other_split() -> None:
    cfg = RunConfig(clients=4, partition="dirichlet", alpha=0.5, seed=3)
    first, again = partition_indices(LABELS, cfg), partition_indices(LABELS, cfg)
    other = partition_indices(LABELS, cfg.replace(seed=4))
    assert all(np.array_equal(a, b) for a, b in zip(first.train, again.train, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first.train, other.train, strict=True))
    iid = RunConfig(clients=4)
    assert not np.array_equal(
        partition_indices(LABELS, iid).train[0],
        partition_indices(LABELS, iid.replace(seed=1)).train[0],
    )


def test_pathological_gives_each_client_its_classes_only() -> None:
    parts = partition_indices(
        LABELS, RunConfig(clients=10, partition="pathological", classes_per_client=2)
    )
    counts = label_counts(LABELS, parts, 10)
    assert ((counts > 0).sum(axis=1) <= 2).all()
    assert all(counts[i, i % 10] > 0 for i in range(10))  # client i always holds label i % 10


def test_dirichlet_skew_grows_as_alpha_shrinks() -> None:
    def skew(alpha: float) -> float:
        parts = partition_indices(LABELS, RunConfig(clients=10, partition="dirichlet", alpha=alpha))
        counts = label_counts(LABELS, parts, 10)
        shares = counts / counts.sum(axis=1, keepdims=True)
        return float(shares.max(axis=1).mean())

    assert skew(0.1) > skew(1.0) > skew(100.0)


def test_shard_clients_hold_few_labels() -> None:
    parts = partition_indices(LABELS, RunConfig(clients=10, partition="shard", shards_per_client=2))
    counts = label_counts(LABELS, parts, 10)
    assert ((counts > 0).sum(axis=1) <= 3).all()  # two label-sorted shards, at most one boundary


def test_held_out_share() -> None:
    parts = partition_indices(LABELS, RunConfig(clients=5, val_fraction=0.1))
    assert [len(v) for v in parts.val] == [100] * 5
    assert held_out_count(50, 0.1) == 5
    assert held_out_count(5, 0.01) == 1  # at least one when asked for any
    assert held_out_count(1, 0.5) == 0  # never the whole partition
    assert held_out_count(100, 0.0) == 0


def test_more_clients_than_examples_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="--clients"):
        partition_indices(LABELS[:10], RunConfig(clients=11))


def test_cache_returns_the_same_partitions(tmp_path) -> None:
    cfg = RunConfig(clients=3, partition="dirichlet")
    fresh = cached_partition_indices(LABELS, cfg, "key", tmp_path)
    stored = cached_partition_indices(LABELS, cfg, "key", tmp_path)
    assert len(list((tmp_path / "partitions").iterdir())) == 1
    for a, b in zip(fresh.train + fresh.val, stored.train + stored.val, strict=True):
        assert np.array_equal(a, b)
