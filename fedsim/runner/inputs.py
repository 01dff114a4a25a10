"""What a run needs before Ray starts, all of it checked: the options against the
machine, the data and its partitions, the profiles, the user's model and algorithm.

Everything that can be wrong with the input is found here, before the run folder is
claimed (fedsim.runner.lifecycle): a bad run leaves nothing behind. The same loading
serves the driver, a Flower App's client process and the benchmarks' plain loop.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from flwr.serverapp.strategy import Strategy

from fedsim import algorithms
from fedsim.algorithms import privacy
from fedsim.algorithms.base import Algorithm
from fedsim.flower.sizing import private_ray
from fedsim.ground.config import RunConfig
from fedsim.ground.errors import ConfigError
from fedsim.ground.files import cache_root
from fedsim.ground.option import flag
from fedsim.learning import models
from fedsim.learning.data import DecodedDataset, load_dataset, read_column
from fedsim.learning.partition import NATURAL, Partitions, cached_partition_indices
from fedsim.outputs import tracking
from fedsim.outputs.records import Timings
from fedsim.runner import options, server_state
from fedsim.simulation.profiles import Profiles, check_profiles, load_profiles
from fedsim.simulation.sampling import sample_size


@dataclass
class RunInputs:
    """What a run needs before Ray starts, all of it already checked; its algorithm
    built once, for every part of the run that asks it something."""

    cfg: RunConfig
    algorithm: Algorithm
    dataset: DecodedDataset
    partitions: Partitions
    timings: Timings
    profiles: Profiles
    facts: dict[str, object] = field(default_factory=dict)  # for config.json


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
    model = models.check_model(cfg.model, dataset.task)  # one that cannot fit: one line
    if cfg.augment and not dataset.task.augments():
        raise ConfigError(
            flag("augment"), f"crops and flips images; the data is {dataset.task.kind}"
        )
    algorithm = algorithms.build(cfg)
    algorithm.check_model(model)
    check_server_side(cfg, algorithm)
    check_driver_memory(cfg, algorithm, model)
    if cfg.gpus_per_client and private_ray(cfg) and not torch.cuda.is_available():
        raise ConfigError(
            flag("gpus_per_client"),
            f"got {cfg.gpus_per_client:g}, but no GPU is visible here (PyTorch sees no CUDA "
            "device); use 0, or --ray-address a cluster that has GPUs",
        )
    return RunInputs(cfg, algorithm, dataset, partitions, timings, profiles)


def check_server_side(cfg: RunConfig, algorithm: Algorithm) -> None:
    """The algorithm's server side, built once before anything runs (a user's algorithm
    may lack it, or raise): it must be a Flower Strategy whose state checkpoint.pt can
    hold."""
    name = cfg.strategy
    try:
        strategy = privacy.private(cfg, algorithm.strategy())
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
        server_state.state_of(strategy)
    except server_state.Unsaveable as error:  # a lock, an open file among its attributes
        raise ConfigError(
            "--strategy",
            f"{name}'s strategy cannot be saved in checkpoint.pt ({error}); keep its state "
            "in numbers, strings, arrays and ArrayRecords (fedsim.runner.server_state)",
        ) from None


def check_driver_memory(cfg: RunConfig, algorithm: Algorithm, model: torch.nn.Module) -> None:
    """The most client updates the driver holds at once (a round's sample, or FedBuff's
    buffer), each a model, must fit in this machine's memory: a size that cannot is
    refused before anything is allocated for it."""
    buffered = algorithm.buffered()
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
    dataset = load_dataset(cfg.data, cache_root(), cfg.partition_column).normalized(cfg.normalize)
    timings.data_load = time.perf_counter() - tick
    tick = time.perf_counter()
    labels = np.asarray(dataset.train_y)
    if cfg.only_group:
        groups = _groups(cfg, dataset)
        rows = _group_rows(cfg, dataset, groups)
        one = cfg.replace(clients=1, partition="iid", partition_column="")
        key = f"{dataset.key}:{cfg.only_group}"
        partitions = cached_partition_indices(labels[rows], one, key, cache_root()).map(rows)
    else:
        natural = _groups(cfg, dataset) if cfg.partition == NATURAL else None
        partitions = cached_partition_indices(labels, cfg, dataset.key, cache_root(), natural)
    timings.partition = time.perf_counter() - tick
    return dataset, partitions


def _groups(cfg: RunConfig, dataset: DecodedDataset) -> np.ndarray:
    """Each training example's group, for --partition natural or --only-group: the
    data's own (a table's, Heart Disease's centres), else --partition-column's values
    (read only here, where a run needs them)."""
    if dataset.train_groups is not None:
        return np.asarray(dataset.train_groups)
    if cfg.partition_column:
        return read_column(cfg.data, cfg.partition_column)
    raise ConfigError(
        flag("partition" if cfg.partition == NATURAL else "only_group"),
        f"{cfg.data} names no groups of its own: give --partition-column, the column "
        "naming each example's client",
    )


def _group_rows(cfg: RunConfig, dataset: DecodedDataset, groups: np.ndarray) -> np.ndarray:
    """The training rows of --only-group's group (by the data's group name, or the
    column's value as written)."""
    names = dataset.groups or tuple(map(str, np.unique(groups)))
    if cfg.only_group not in names:
        raise ConfigError(
            flag("only_group"),
            f"{cfg.only_group!r} is not a group of the data ({', '.join(names)})",
        )
    wanted = names.index(cfg.only_group) if dataset.groups else cfg.only_group
    found = groups if dataset.groups else groups.astype(str)
    return np.flatnonzero(found == wanted)
