"""The Flower ClientApp: local training and evaluation on one client's partition.

Built by a factory that closes over the run's config and a `ClientData` handle,
because the simulation engine hands apps an empty run_config. Each actor process keeps
one model object and one zero-copy view of the data, so a round costs a state-dict
load, gathering the client's rows, and the training itself; its memory stays flat
however many clients it serves.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedsim import task
from fedsim.actor_log import log_calls
from fedsim.config import RunConfig
from fedsim.partition import Partitions

PARTITION_KEY = "partition-id"

# This module is what actors import first: keep Flower's per-actor chatter (such as
# "Manually terminating ClientAppActor" at shutdown) off the console; fedsim counts and
# reports client failures itself.
logging.getLogger("flwr").setLevel(logging.ERROR)


class SimulatedDropout(RuntimeError):
    """Raised on purpose by --client-failure-rate."""


class ClientData(Protocol):
    """Where a client finds its data; `key` names it within one process."""

    key: str

    def load(self) -> tuple[np.ndarray, np.ndarray, Partitions]:
        """The training images (N, 3, 32, 32) uint8, their labels, and the partitions."""
        ...


@dataclass(frozen=True)
class RayObjectData:
    """Data the driver put into Ray's object store once; actors read it zero-copy."""

    key: str
    images: Any  # ray.ObjectRef to the uint8 training images
    labels: Any  # ray.ObjectRef to the labels
    partitions: Any  # ray.ObjectRef to Partitions

    def load(self) -> tuple[np.ndarray, np.ndarray, Partitions]:
        import ray

        return tuple(ray.get([self.images, self.labels, self.partitions]))  # type: ignore[return-value]


_PROCESS_CACHE: dict[tuple, Any] = {}


def _per_process(key: tuple, make: Callable[[], Any]) -> Any:
    """Memoise within this actor process: actors outlive messages, apps do not."""
    if key not in _PROCESS_CACHE:
        _PROCESS_CACHE[key] = make()
    return _PROCESS_CACHE[key]


def client_device(cfg: RunConfig) -> torch.device:
    """CUDA if this client was given a GPU: by --gpus-per-client, or (left to auto) by
    Ray, or outside Ray (a SuperNode) by simply seeing one. A client given a GPU it
    cannot see (a logical GPU, a broken driver) trains on CPU after one warning line."""
    wants_gpu = _given_gpu() if cfg.gpus_per_client is None else bool(cfg.gpus_per_client)
    if wants_gpu and not torch.cuda.is_available():
        _per_process(
            ("cpu-fallback-warning",),
            lambda: print(
                "fedsim: warning: this client was given a GPU but sees no CUDA device; "
                "training on CPU",
                file=sys.stderr,
                flush=True,
            ),
        )
    return torch.device("cuda" if wants_gpu and torch.cuda.is_available() else "cpu")


def _given_gpu() -> bool:
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return bool(ray.get_gpu_ids())
    return torch.cuda.is_available()


def _setup_process(cfg: RunConfig) -> None:
    """Give torch as many threads as the actor has CPUs (Ray does not cap torch)."""
    _per_process(("threads",), lambda: torch.set_num_threads(max(1, int(cfg.cpus_per_client))))


def _tensors(data: ClientData, pid: int, split: str, device: torch.device):
    """One client's split as (uint8 images, int64 labels) on `device`, gathered on each
    call from the process's zero-copy view of the data (tens of milliseconds for the
    seed job's 22,500 images). Keeping each client's copy would grow an actor by every
    client it ever serves: with 1000 clients, by the whole training set per actor."""
    images, labels, parts = _per_process(("data", data.key), data.load)
    rows = (parts.train if split == "train" else parts.val)[pid]
    return (
        torch.from_numpy(images[rows]).to(device),
        torch.from_numpy(np.asarray(labels[rows], dtype=np.int64)).to(device),
    )


def _model(cfg: RunConfig, arrays: ArrayRecord, device: torch.device) -> torch.nn.Module:
    model = _per_process(
        ("model", cfg.model, str(device)), lambda: task.build_model(cfg.model).to(device)
    )
    model.load_state_dict(arrays.to_torch_state_dict())
    return model


def _partition_id(msg: Message, context: Context) -> int:
    """The server names the partition in simulation; on real devices the node config does."""
    config = msg.content["config"]
    if PARTITION_KEY in config:
        return int(config[PARTITION_KEY])
    return int(context.node_config[PARTITION_KEY])


def client_seed(seed: int, server_round: int, pid: int, stream: int) -> int:
    """Independent, reproducible seeds per (run seed, round, client, purpose)."""
    return int(np.random.default_rng([seed, server_round, pid, stream]).integers(2**62))


def train_settings(cfg: RunConfig, proximal_mu: float) -> task.TrainSettings:
    return task.TrainSettings(
        epochs=cfg.local_epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        proximal_mu=proximal_mu,
        augment=cfg.augment,
    )


def handle_train(cfg: RunConfig, data: ClientData, msg: Message, context: Context) -> Message:
    _setup_process(cfg)
    pid = _partition_id(msg, context)
    config = msg.content["config"]
    server_round = int(config["server-round"])

    # Simulated dropout, decided by the seed alone
    dropout = np.random.default_rng(client_seed(cfg.seed, server_round, pid, 1))
    if cfg.client_failure_rate and dropout.random() < cfg.client_failure_rate:
        raise SimulatedDropout(f"client {pid} dropped out in round {server_round}")

    # Load the global model and this client's data
    device = client_device(cfg)
    model = _model(cfg, msg.content["arrays"], device)
    images, labels = _tensors(data, pid, "train", device)

    # Train locally (FedProx's mu arrives in the config when the strategy sends it)
    generator = torch.Generator().manual_seed(client_seed(cfg.seed, server_round, pid, 0))
    settings = train_settings(cfg, proximal_mu=float(config.get("proximal-mu", 0.0)))
    loss = task.train(model, images, labels, settings, generator)

    # Construct reply
    metrics = MetricRecord({"train_loss": loss, "num-examples": len(labels)})
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics})
    return Message(content=content, reply_to=msg)


def handle_evaluate(cfg: RunConfig, data: ClientData, msg: Message, context: Context) -> Message:
    _setup_process(cfg)
    pid = _partition_id(msg, context)
    device = client_device(cfg)
    model = _model(cfg, msg.content["arrays"], device)
    images, labels = _tensors(data, pid, "val", device)
    loss, accuracy = task.evaluate(model, images, labels)
    metrics = MetricRecord(
        {"eval_loss": loss, "eval_accuracy": accuracy, "num-examples": len(labels)}
    )
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)


def build_client_app(cfg: RunConfig, data: ClientData) -> ClientApp:
    """The handlers bound to this run. They are module functions under `partial`, not
    closures: Flower pickles the app into every message it hands an actor, and a
    closure is pickled by value (2.5 ms of the driver's time per message), a module
    function by name (0.1 ms)."""
    app = ClientApp(mods=[log_calls])
    app.train()(partial(handle_train, cfg, data))
    app.evaluate()(partial(handle_evaluate, cfg, data))
    return app
