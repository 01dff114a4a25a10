"""How fedsim's clients fit into what Ray offers: the CPU and GPU share of each client's
actor, and how many run at a time."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from fedsim.ground.choices import RAY_RESOURCE_UNIT
from fedsim.ground.config import RunConfig
from fedsim.ground.errors import ConfigError
from fedsim.ground.option import flag


@dataclass(frozen=True)
class Cluster:
    """What Ray offers and how fedsim's clients fit into it."""

    cpus: float
    gpus: float
    started_here: bool
    client_resources: dict[str, float]

    def describe(self) -> dict[str, object]:
        return {
            "cpus": self.cpus,
            "gpus": self.gpus,
            "started_here": self.started_here,
            "client_resources": self.client_resources,
            "concurrent_clients": self.concurrent_clients,
        }

    @property
    def concurrent_clients(self) -> int:
        by_cpu = fits(self.cpus, self.client_resources["num_cpus"])
        gpu_share = self.client_resources["num_gpus"]
        return min(by_cpu, fits(self.gpus, gpu_share)) if gpu_share else by_cpu


def ray_address(cfg: RunConfig) -> str:
    return cfg.ray_address or os.environ.get("RAY_ADDRESS") or "local"


def private_ray(cfg: RunConfig) -> bool:
    """fedsim starts a Ray instance of its own on this machine (no cluster is named)."""
    return ray_address(cfg) == "local"


def fits(total: float, share: float) -> int:
    """How many `share`s Ray places in `total`, counted as Ray does, in whole units:
    ten 0.1-GPU actors fit on one GPU, although 1.0 // 0.1 is 9.0 in floating point."""
    units = round(share / RAY_RESOURCE_UNIT)
    return round(total / RAY_RESOURCE_UNIT) // units if units else 0


def size_clients(cfg: RunConfig) -> Cluster:
    """What Ray offers and how `cfg`'s clients fit into it; a CPU or GPU share the
    cluster cannot give one client is refused (Ray would keep every actor pending)."""
    import ray

    address = ray_address(cfg)
    resources = ray.cluster_resources()
    cpus, gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
    share = gpu_share(cfg, cpus, gpus, _gpu_memory_mib() if gpus else None)
    if share > gpus:
        where = "this machine" if private_ray(cfg) else f"the cluster at {address}"
        raise ConfigError(
            flag("gpus_per_client"),
            f"got {share:g}, but Ray has {gpus:g} GPUs on {where}; use 0, or declare "
            "GPUs on the cluster's nodes (ray start --num-gpus N)",
        )
    if cfg.cpus_per_client > cpus:
        raise ConfigError(
            flag("cpus_per_client"),
            f"got {cfg.cpus_per_client:g}, but Ray has {cpus:g} CPU{'' if cpus == 1 else 's'}; "
            "no client could run",
        )
    if cfg.gpus_per_client is None and share:
        print(
            f"fedsim: Ray has {gpus:g} GPUs and no --gpus-per-client was given: "
            f"{share:g} GPU per client ({round(1 / share)} side by side on each GPU)",
            flush=True,
        )
    return Cluster(
        cpus=cpus,
        gpus=gpus,
        started_here=private_ray(cfg),
        client_resources={"num_cpus": cfg.cpus_per_client, "num_gpus": share},
    )


# GPU memory allowed for one client actor (CUDA's context is most of it; the measured
# figure is in docs/performance.md, "On a GPU")
ACTOR_GPU_MIB = 1024


def gpu_share(cfg: RunConfig, cpus: float, gpus: float, gpu_memory_mib: float | None) -> float:
    """--gpus-per-client if given; else 0 without GPUs, or the share that lets as many
    clients run side by side on each GPU as the CPUs allow (no more than the run's
    clients, nor than ACTOR_GPU_MIB each fit in `gpu_memory_mib`, the driver's GPU's
    memory where it has one). Measured on a GPU, every smaller share was faster, down to
    the smallest tried (docs/performance.md, "On a GPU"): the CPUs are the limit.
    The share is rounded down to Ray's unit, so that exactly that many fit."""
    if cfg.gpus_per_client is not None:
        return cfg.gpus_per_client
    if not gpus:
        return 0.0
    side_by_side = fits(cpus, cfg.cpus_per_client) // int(gpus) if gpus >= 1 else 1
    if gpu_memory_mib:
        side_by_side = min(side_by_side, int(gpu_memory_mib // ACTOR_GPU_MIB))
    count = max(1, min(cfg.clients, side_by_side))
    return math.floor(1 / count / RAY_RESOURCE_UNIT) * RAY_RESOURCE_UNIT


def _gpu_memory_mib() -> float | None:
    """The memory of the GPU this process sees (one kind per machine assumed); None
    where it sees none (a driver without a GPU, attached to a cluster that has some)."""
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(0).total_memory / 2**20
