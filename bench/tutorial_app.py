"""The peer: Flower's PyTorch quickstart client pattern, run through fedsim's server.

What `examples/quickstart-pytorch` does on each call: build a fresh model, load the
partition through flwr-datasets (one FederatedDataset per process in a module global),
split it, decode and normalise every image per batch with `with_transform` and
torchvision transforms, and iterate a fresh DataLoader. Options, partition sizes,
optimiser and the server side are fedsim's, so only the client side differs.

    python -m bench.tutorial_app --clients 2 --rounds 3 --data ../shared/data/cifar10
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch.utils.data import DataLoader

from bench.swap import simulate_with
from fedsim.flower import bundles
from fedsim.ground import messages
from fedsim.ground.config import RunConfig
from fedsim.learning import models

_fds = None  # the quickstart's per-process FederatedDataset cache


def federated_dataset(source: str, clients: int) -> Any:
    from flwr_datasets import FederatedDataset
    from flwr_datasets.partitioner import IidPartitioner

    return FederatedDataset(
        dataset=source, partitioners={"train": IidPartitioner(num_partitions=clients)}
    )


def load_data(cfg: RunConfig, source: str, pid: int) -> tuple[DataLoader, DataLoader]:
    from torchvision.transforms import Compose, Normalize, ToTensor

    global _fds
    if _fds is None:
        _fds = federated_dataset(source, cfg.clients)
    split = _fds.load_partition(pid).train_test_split(test_size=cfg.val_fraction, seed=42)
    transforms = Compose([ToTensor(), Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])

    def apply_transforms(batch: dict) -> dict:
        batch["img"] = [transforms(img) for img in batch["img"]]
        return batch

    split = split.with_transform(apply_transforms)
    return (
        DataLoader(split["train"], batch_size=cfg.batch_size, shuffle=True),
        DataLoader(split["test"], batch_size=cfg.batch_size),
    )


def train_fn(model: torch.nn.Module, loader: DataLoader, cfg: RunConfig) -> float:
    criterion = torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    model.train()
    running_loss = 0.0
    for _ in range(cfg.local_epochs):
        for batch in loader:
            optimizer.zero_grad()
            loss = criterion(model(batch["img"]), batch["label"])
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
    return running_loss / (cfg.local_epochs * len(loader))


def test_fn(model: torch.nn.Module, loader: DataLoader) -> tuple[float, float]:
    criterion = torch.nn.CrossEntropyLoss()
    model.eval()
    correct, loss = 0, 0.0
    with torch.no_grad():
        for batch in loader:
            outputs = model(batch["img"])
            loss += criterion(outputs, batch["label"]).item()
            correct += (outputs.argmax(1) == batch["label"]).sum().item()
    return loss / len(loader), correct / len(loader.dataset)


def build_client_app(cfg: RunConfig, data: Any) -> ClientApp:
    """The quickstart's two handlers, run for each client of a bundle (fedsim.flower.bundles);
    fedsim's prepared `data` is ignored on purpose."""
    app = ClientApp()
    source = str(Path(cfg.data).resolve())

    def model_from(content: RecordDict) -> torch.nn.Module:
        model = models.build_model(cfg.model)
        model.load_state_dict(content["arrays"].to_torch_state_dict())
        return model

    def train(pid: int, content: RecordDict) -> RecordDict:
        model = model_from(content)
        trainloader, _ = load_data(cfg, source, pid)
        train_loss = train_fn(model, trainloader, cfg)
        metrics = {"train_loss": train_loss, "num-examples": len(trainloader.dataset)}
        return RecordDict(
            {"arrays": ArrayRecord(model.state_dict()), "metrics": MetricRecord(metrics)}
        )

    def evaluate(pid: int, content: RecordDict) -> RecordDict:
        model = model_from(content)
        _, valloader = load_data(cfg, source, pid)
        eval_loss, eval_acc = test_fn(model, valloader)
        metrics = {
            "eval_loss": eval_loss,
            "eval_accuracy": eval_acc,
            "num-examples": len(valloader.dataset),
        }
        return RecordDict({"metrics": MetricRecord(metrics)})

    def each_client(handle):
        def handler(msg: Message, context: Context) -> Message:
            tasks, _ = bundles.unpack_tasks(msg.content)
            outcomes = []
            for job in tasks:
                content = handle(job.pid, job.content)
                size = messages.recorddict_bytes(content)
                outcomes.append(
                    messages.ClientOutcome(job.pid, messages.OK, bytes_up=size, content=content)
                )
            return Message(content=bundles.pack_outcomes(outcomes), reply_to=msg)

        return handler

    app.train()(each_client(train))
    app.evaluate()(each_client(evaluate))
    return app


if __name__ == "__main__":
    simulate_with(build_client_app)
