"""One run, end to end: data -> partitions -> run folder -> Ray -> Flower -> results."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord

from fedsim import engine, task
from fedsim.client_app import RayObjectData, build_client_app
from fedsim.config import ConfigError, RunConfig, flag
from fedsim.data import DecodedDataset, cache_root, load_cifar
from fedsim.partition import cached_partition_indices
from fedsim.results import (
    CsvRecorder,
    ModelSaver,
    ProgressPrinter,
    Timings,
    run_name,
    write_config_json,
)
from fedsim.server_app import FederatedLoop, build_server_app
from fedsim.strategies import build_strategy


class CentralEvaluator:
    """Evaluates the global model on the whole test split in the driver process."""

    def __init__(self, cfg: RunConfig, dataset: DecodedDataset) -> None:
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = task.build_model(cfg.model).to(self.device)
        self.images = torch.from_numpy(np.array(dataset.test_x)).to(self.device)
        self.labels = torch.from_numpy(np.array(dataset.test_y)).to(self.device)

    def __call__(self, arrays: ArrayRecord) -> tuple[float, float]:
        self.model.load_state_dict(arrays.to_torch_state_dict())
        return task.evaluate(self.model, self.images, self.labels, batch_size=500)


def prepare_run_dir(cfg: RunConfig) -> Path:
    """Create results/<run-name>/, refusing to overwrite an earlier run."""
    parent = Path(cfg.results_dir)
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(
            flag("results_dir"), f"cannot create {parent}: {error.strerror}"
        ) from error
    if not os.access(parent, os.W_OK):
        raise ConfigError(flag("results_dir"), f"{parent} is not writable")
    run_dir = parent / run_name(cfg)
    try:
        run_dir.mkdir()
    except FileExistsError:
        raise ConfigError(
            flag("name"), f"{run_dir} already exists; choose another --name"
        ) from None
    return run_dir


def run(cfg: RunConfig, started: float | None = None) -> Path:
    """Run one simulation; returns its folder. Raises ConfigError before writing anything."""
    started = started or time.perf_counter()
    timings = Timings(imports=time.perf_counter() - started)

    tick = time.perf_counter()
    dataset = load_cifar(cfg.data, cache_root())
    timings.data_load = time.perf_counter() - tick
    tick = time.perf_counter()
    partitions = cached_partition_indices(
        np.asarray(dataset.train_y), cfg, dataset.key, cache_root()
    )
    timings.partition = time.perf_counter() - tick

    run_dir = prepare_run_dir(cfg)
    config_path = run_dir / "config.json"
    extra = {
        "run_dir": str(run_dir),
        "data_cache_key": dataset.key,
        "partition_sizes": partitions.sizes,
    }
    write_config_json(config_path, cfg, timings, "running", extra)

    tick = time.perf_counter()
    cluster = engine.start_ray(cfg)
    timings.ray_start = time.perf_counter() - tick
    extra["cluster"] = {
        "cpus": cluster.cpus,
        "gpus": cluster.gpus,
        "client_resources": cluster.client_resources,
        "concurrent_clients": cluster.concurrent_clients,
    }
    print(
        f"fedsim: {cfg.clients} clients, {cfg.rounds} rounds -> {run_dir}\n"
        f"fedsim: Ray has {cluster.cpus:g} CPUs, {cluster.gpus:g} GPUs; "
        f"{cluster.concurrent_clients} clients run at a time "
        f"({cluster.client_resources['num_cpus']:g} CPU, "
        f"{cluster.client_resources['num_gpus']:g} GPU each)",
        flush=True,
    )

    status = "failed"
    try:
        import ray

        data = RayObjectData(
            key=dataset.key,
            images=ray.put(np.asarray(dataset.train_x)),
            labels=ray.put(np.asarray(dataset.train_y)),
            partitions=ray.put(partitions),
        )
        torch.set_num_threads(os.cpu_count() or 1)
        initial = ArrayRecord(task.build_model(cfg.model, seed=cfg.seed).state_dict())
        loop = FederatedLoop(
            cfg,
            build_strategy(cfg),
            initial,
            CentralEvaluator(cfg, dataset),
            [
                CsvRecorder(run_dir / "rounds.csv"),
                ProgressPrinter(cfg.rounds),
                ModelSaver(run_dir / "model.pt"),
            ],
            timings,
        )
        engine.run_simulation(build_server_app(loop), build_client_app(cfg, data), cfg, cluster)
        status = "complete"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        engine.stop_ray()
        timings.total = time.perf_counter() - started
        write_config_json(config_path, cfg, timings, status, extra)
    print(f"fedsim: done in {timings.total:.1f} s -> {run_dir}", file=sys.stdout, flush=True)
    return run_dir
