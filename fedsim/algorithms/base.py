"""What every algorithm shares: a generic client (local SGD on the client's partition)
and the Flower strategy settings fedsim needs; an algorithm overrides only what it
changes (pfl-research's pattern: an algorithm is a short class over a generic loop).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy import Strategy
from torch import nn

from fedsim.algorithms import attacks
from fedsim.ground import messages
from fedsim.ground.config import RunConfig
from fedsim.learning import training

# fedsim samples clients itself (seeded, by partition id) and shows each strategy a
# view of exactly the sampled clients, so the strategies' own fractions are 1.0 and
# their minimums 1: Flower's default minimum of 2 would wait forever for a second client.
SAMPLE_ALL = {
    "fraction_train": 1.0,
    "fraction_evaluate": 1.0,
    "min_train_nodes": 1,
    "min_evaluate_nodes": 1,
    "min_available_nodes": 1,
}


def given(**options: Any) -> dict[str, Any]:
    """Only the options the user set, so Flower's defaults stay Flower's."""
    return {key: value for key, value in options.items() if value is not None}


def train_settings(cfg: RunConfig) -> training.TrainSettings:
    """Local SGD as the options set it."""
    return training.TrainSettings(
        epochs=cfg.local_epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        augment=cfg.augment,
    )


def client_seed(seed: int, server_round: int, pid: int, stream: int) -> int:
    """Independent, reproducible seeds per (run seed, round, client, purpose)."""
    return int(np.random.default_rng([seed, server_round, pid, stream]).integers(2**62))


@dataclass
class ClientContext:
    """One client's task inside an actor: what it was sent, its memory, and access to
    its data and to the process's model."""

    cfg: RunConfig
    pid: int
    server_round: int
    content: RecordDict  # what the strategy sent this client
    state: RecordDict  # its memory from its last round (empty the first time)
    load_model: Callable[[ArrayRecord], nn.Module]  # the process's model with these weights
    load_data: Callable[[str], tuple[torch.Tensor, torch.Tensor]]  # "train"/"val" split

    def generator(self, stream: int = 0) -> torch.Generator:
        return torch.Generator().manual_seed(
            client_seed(self.cfg.seed, self.server_round, self.pid, stream)
        )

    @property
    def config(self):
        return self.content.get(messages.CONFIG, {})


@dataclass
class ClientResult:
    content: RecordDict  # the reply the strategy aggregates
    state: RecordDict | None = None  # the client's new memory (None: keep it)


class Algorithm:
    """Server side: `strategy()`, a Flower Strategy (Flower's own class wherever one
    exists). Client side: `train()` and `evaluate()`; the default is plain local SGD
    with the algorithm's `hooks()`, and a reply of the new weights."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg

    def strategy(self) -> Strategy:
        raise NotImplementedError

    def settings(self) -> training.TrainSettings:
        return train_settings(self.cfg)

    def hooks(self, ctx: ClientContext, model: nn.Module) -> training.LocalHooks:
        return training.LocalHooks()

    def training_data(self, ctx: ClientContext) -> tuple[torch.Tensor, torch.Tensor]:
        """The client's training split; a label-flipping attacker's labels are flipped."""
        images, labels = ctx.load_data("train")
        if attacks.attack_of(ctx.cfg, ctx.pid) == "label-flip":
            labels = attacks.flip_labels(labels)
        return images, labels

    def train(self, ctx: ClientContext) -> ClientResult:
        model = ctx.load_model(ctx.content[messages.ARRAYS])
        images, labels = self.training_data(ctx)
        hooks = self.hooks(ctx, model)
        result = training.train(model, images, labels, self.settings(), ctx.generator(), hooks)
        attacks.poison(ctx, model)  # a malicious client's weights, before the reply is built
        return self.reply(ctx, model, result, len(labels))

    def reply(
        self, ctx: ClientContext, model: nn.Module, result: training.TrainResult, examples: int
    ) -> ClientResult:
        metrics = {messages.TRAIN_LOSS: result.loss, messages.NUM_EXAMPLES: examples}
        return ClientResult(messages.train_reply(self.update(ctx, model), metrics))

    def update(self, ctx: ClientContext, model: nn.Module) -> ArrayRecord:
        """What the client sends back: its trained weights."""
        return ArrayRecord(model.state_dict())

    def evaluate(self, ctx: ClientContext) -> ClientResult:
        model = ctx.load_model(ctx.content[messages.ARRAYS])
        images, labels = ctx.load_data("val")
        loss, accuracy = training.evaluate(model, images, labels)
        metrics = {
            messages.EVAL_LOSS: loss,
            messages.EVAL_ACCURACY: accuracy,
            messages.NUM_EXAMPLES: len(labels),
        }
        return ClientResult(RecordDict({messages.METRICS: MetricRecord(metrics)}))
