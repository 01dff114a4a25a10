"""Partitioning through flwr-datasets: sizes, seeds, label skew, held-out splits."""

from __future__ import annotations

import numpy as np
import pytest

from fedsim.ground.config import RunConfig
from fedsim.ground.errors import ConfigError
from fedsim.learning.partition import (
    cached_partition_indices,
    held_out_count,
    label_counts,
    partition_indices,
)

LABELS = np.random.default_rng(0).integers(0, 10, size=5000)


def _all_rows(parts) -> np.ndarray:
    return np.concatenate([parts.train_rows, parts.val_rows])


def _same(a, b) -> bool:
    return (
        all(
            np.array_equal(a.train(i), b.train(i)) and np.array_equal(a.val(i), b.val(i))
            for i in range(a.clients)
        )
        and a.clients == b.clients
    )


@pytest.mark.parametrize("partition", ["iid", "dirichlet", "pathological", "shard"])
def test_partitions_are_disjoint_and_cover_what_they_claim(partition: str) -> None:
    parts = partition_indices(LABELS, RunConfig(clients=10, partition=partition))
    rows = _all_rows(parts)
    assert parts.clients == 10 and len(parts.val_offsets) == 11
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
    assert _same(first, again) and not _same(first, other)
    iid = RunConfig(clients=4)
    assert not np.array_equal(
        partition_indices(LABELS, iid).train(0),
        partition_indices(LABELS, iid.replace(seed=1)).train(0),
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
    assert parts.val_sizes.tolist() == [100] * 5
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
    assert _same(fresh, stored)


@pytest.mark.parametrize("partition", ["iid", "dirichlet", "pathological", "shard"])
@pytest.mark.parametrize("clients", [1, 7, 40])
def test_assignment_read_once_equals_flwr_datasets_load_partition(partition, clients) -> None:
    """fedsim reads each partitioner's whole assignment at once; flwr-datasets' public
    way is one `load_partition` per client: both must give the same rows."""
    from datasets import Dataset
    from flwr_datasets.partitioner import IidPartitioner

    from fedsim.learning.partition import PARTITIONERS

    cfg = RunConfig(clients=clients, partition=partition, seed=3, val_fraction=0.2)
    parts = partition_indices(LABELS, cfg)
    order = np.random.default_rng(cfg.seed).permutation(len(LABELS))
    partitioner = IidPartitioner(clients) if partition == "iid" else PARTITIONERS[partition](cfg)
    partitioner.dataset = Dataset.from_dict({"label": LABELS[order], "row": order})
    for pid in range(clients):
        rows = np.asarray(partitioner.load_partition(pid)["row"])
        ours = np.concatenate([parts.val(pid), parts.train(pid)])
        assert np.array_equal(np.sort(ours), np.sort(rows)), pid
        shuffled = (
            np.random.default_rng([cfg.seed, pid]).permutation(rows) if len(rows) > 1 else rows
        )
        assert np.array_equal(ours, shuffled), pid


def test_many_one_example_clients_partition_fast() -> None:
    import time

    labels = np.random.default_rng(0).integers(0, 10, size=50_000)
    started = time.perf_counter()
    parts = partition_indices(labels, RunConfig(clients=50_000, val_fraction=0))
    assert time.perf_counter() - started < 15  # one load_partition per client took 35-39 s
    assert parts.train_sizes.tolist() == [1] * 50_000
    assert np.array_equal(np.sort(parts.train_rows), np.arange(50_000))


def test_a_damaged_cache_file_is_computed_again(tmp_path) -> None:
    cfg = RunConfig(clients=3)
    fresh = cached_partition_indices(LABELS, cfg, "key", tmp_path)
    (stored,) = (tmp_path / "partitions").iterdir()
    stored.write_bytes(stored.read_bytes()[:100])  # truncated
    assert _same(cached_partition_indices(LABELS, cfg, "key", tmp_path), fresh)
    stored.write_bytes(b"")
    assert _same(cached_partition_indices(LABELS, cfg, "key", tmp_path), fresh)


def test_niid_bench_dirichlet_balancing_and_minimum_size() -> None:
    """--dirichlet-balance and --min-partition-size are flwr-datasets' self_balancing
    and min_partition_size: with few examples per client, balancing caps big clients and
    the redraw gives every client at least the minimum."""
    cfg = RunConfig(clients=10, partition="dirichlet", alpha=0.5, val_fraction=0)
    plain = partition_indices(LABELS, cfg)
    balanced = partition_indices(LABELS, cfg.replace(dirichlet_balance=True, min_partition_size=10))
    assert min(balanced.sizes) >= 10
    assert max(balanced.sizes) < max(plain.sizes)
    assert sum(balanced.sizes) == sum(plain.sizes) == len(LABELS)


def test_partitions_that_cannot_be_made_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match=r"--shards-per-client: 10 clients × 9 shards need 90"):
        partition_indices(
            LABELS[:50], RunConfig(clients=10, partition="shard", shards_per_client=9)
        )
    with pytest.raises(ConfigError, match=r"--partition: dirichlet cannot split the data"):
        partition_indices(
            LABELS[:30],
            RunConfig(clients=10, partition="dirichlet", alpha=0.05, min_partition_size=3),
        )
