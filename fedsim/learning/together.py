"""Local SGD for many clients at once: their weights stacked along a leading axis and
one vectorised step (torch.func's `vmap` over `grad_and_value` of a `functional_call`)
for all of them, where `training.train` takes one client after another.

Each client keeps exactly what it has one at a time: its own data, its own generator
(the same permutation and augmentation draws, in the same order), its own momentum,
its own proximal anchor and step correction (fedsim.learning.training.LocalHooks).
Clients whose partitions differ in size take different numbers of steps: each step
trains only the clients that have it (the others' weights are left as they are, not
fed data they do not own), and a last, short batch is padded with examples of weight
zero. The arithmetic is grouped differently (a sum over a padded batch, a batched
convolution), so weights agree with one-at-a-time training to float rounding, not bit
for bit (tests/test_together.py).

A model with buffers (BatchNorm's running statistics) changes them as it runs and is
trained one client at a time (`why_not`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fedsim.ground.config import AUTO, ON
from fedsim.learning.training import (
    LocalHooks,
    TrainResult,
    TrainSettings,
    batches,
    normalize,
    steps_of,
)


def wanted(vectorize: str, device: torch.device) -> bool:
    """Whether --vectorize asks clients training on `device` to train together: auto
    says yes on a GPU only (on two CPU cores the grouped convolutions vmap makes were
    slower than one client after another; docs/performance.md)."""
    return vectorize == ON or (vectorize == AUTO and device.type == "cuda")


# At most this many clients in one vectorised step, a fixed bound on memory (a group
# holds this many copies of the weights, momentum and anchors, and their batches'
# activations at once: 64 × 64 CIFAR-10 images through the quickstart CNN is about
# 40 MB); not yet sized from the model and the device's memory
MAX_TOGETHER = 64


def why_not(model: nn.Module) -> str | None:
    """Why this model cannot train clients together (None: it can)."""
    if any(True for _ in model.buffers()):
        return "the model has buffers (BatchNorm's running statistics), kept per client"
    return None


def train_together(
    model: nn.Module,
    starts: list[dict[str, torch.Tensor]],
    data: list[tuple[torch.Tensor, torch.Tensor]],
    settings: TrainSettings,
    generators: list[torch.Generator],
    hooks: list[LocalHooks],
) -> tuple[list[dict[str, torch.Tensor]], list[TrainResult]]:
    """Train client k from weights `starts[k]` on `data[k]` with `generators[k]` and
    `hooks[k]` (declarative ones only), MAX_TOGETHER at a time; their trained
    parameters and results, in order."""
    trained: list[dict[str, torch.Tensor]] = []
    results: list[TrainResult] = []
    for first in range(0, len(starts), MAX_TOGETHER):
        part = slice(first, first + MAX_TOGETHER)
        group = _Group(model, starts[part], hooks[part], settings)
        weights, done = group.train(data[part], generators[part])
        trained += weights
        results += done
    return trained, results


class _Group:
    """Clients trained together: their parameters, momentum buffers, proximal anchors
    and step corrections, each stacked along a leading client axis."""

    def __init__(
        self,
        model: nn.Module,
        starts: list[dict[str, torch.Tensor]],
        hooks: list[LocalHooks],
        settings: TrainSettings,
    ) -> None:
        from torch.func import functional_call, grad_and_value, vmap

        self.model, self.settings = model, settings
        self.names = [name for name, _ in model.named_parameters()]
        self.device = next(model.parameters()).device
        self.params = self._stacked([[s[n].to(self.device) for n in self.names] for s in starts])
        self.momentum = {n: torch.zeros_like(p) for n, p in self.params.items()}
        self.mu = torch.tensor([h.proximal[0] if h.proximal else 0.0 for h in hooks])
        self.mu = self.mu.to(self.device)
        self.anchors = self._stacked(
            [
                h.proximal[1] if h.proximal else [s[n] for n in self.names]
                for h, s in zip(hooks, starts, strict=True)
            ]
        )
        self.corrections = None
        if any(h.correction is not None for h in hooks):
            self.corrections = self._stacked(
                [
                    [
                        h.correction[n] if h.correction else torch.zeros_like(self.params[n][0])
                        for n in self.names
                    ]
                    for h in hooks
                ]
            )

        def loss_of(weights, anchor, mu, images, labels, mask):
            """One client's batch loss (padding weighs nothing), proximal term included."""
            logits = functional_call(model, weights, (normalize(images),))
            per_example = F.cross_entropy(logits, labels, reduction="none")
            loss = (per_example * mask).sum() / mask.sum().clamp(min=1)
            drift = sum((weights[n] - anchor[n]).pow(2).sum() for n in self.names)
            return loss + mu / 2 * drift

        self.step_of = vmap(grad_and_value(loss_of))

    def _stacked(self, per_client: list[list[torch.Tensor]]) -> dict[str, torch.Tensor]:
        """{name: the clients' tensors of that name, stacked}, from a list per client."""
        return {
            n: torch.stack([tensors[i].to(self.device) for tensors in per_client])
            for i, n in enumerate(self.names)
        }

    def train(
        self, data: list[tuple[torch.Tensor, torch.Tensor]], generators: list[torch.Generator]
    ) -> tuple[list[dict[str, torch.Tensor]], list[TrainResult]]:
        self.model.train()
        clients = len(data)
        steps = [steps_of(len(labels), self.settings) for _, labels in data]
        streams = [
            batches(*pair, self.settings, g) for pair, g in zip(data, generators, strict=True)
        ]
        totals = torch.zeros(clients, device=self.device)
        for step in range(max(steps, default=0)):
            active = [k for k in range(clients) if step < steps[k]]
            index = None if len(active) == clients else torch.tensor(active, device=self.device)
            losses = self._step(index, [next(streams[k]) for k in active])
            totals = _put(totals, index, _rows(totals, index) + losses)
        trained = [{n: self.params[n][k] for n in self.names} for k in range(clients)]
        results = [
            TrainResult(loss=float(totals[k]) / max(steps[k], 1), steps=steps[k])
            for k in range(clients)
        ]
        return trained, results

    def _step(
        self, index: torch.Tensor | None, batches_now: list[tuple[torch.Tensor, torch.Tensor]]
    ) -> torch.Tensor:
        """One SGD step of the clients in `index` (None: all), each on its batch; their
        losses. torch.optim.SGD's update (training.SGD), then the step correction."""
        settings, size = self.settings, self.settings.batch_size
        first = batches_now[0][0]
        images = first.new_zeros((len(batches_now), size, *first.shape[1:]))
        labels = torch.zeros((len(batches_now), size), dtype=torch.long, device=self.device)
        mask = torch.zeros((len(batches_now), size), device=self.device)
        for row, (batch, batch_labels) in enumerate(batches_now):
            images[row, : len(batch_labels)] = batch
            labels[row, : len(batch_labels)] = batch_labels
            mask[row, : len(batch_labels)] = 1.0
        params, anchors = _take(self.params, index), _take(self.anchors, index)
        grads, losses = self.step_of(params, anchors, _rows(self.mu, index), images, labels, mask)
        with torch.no_grad():
            for n in self.names:
                weight, grad = params[n], grads[n]
                if settings.weight_decay:
                    grad = grad.add(weight, alpha=settings.weight_decay)
                if settings.momentum:
                    grad = _rows(self.momentum[n], index).mul(settings.momentum).add(grad)
                    self.momentum[n] = _put(self.momentum[n], index, grad)
                updated = weight.add(grad, alpha=-settings.lr)
                if self.corrections is not None:
                    updated = updated - _rows(self.corrections[n], index)
                self.params[n] = _put(self.params[n], index, updated)
        return losses.detach()


def _rows(tensor: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
    """The active clients' rows (all of them: the tensor itself)."""
    return tensor if index is None else tensor[index]


def _take(tensors: dict[str, torch.Tensor], index: torch.Tensor | None) -> dict[str, torch.Tensor]:
    return {name: _rows(tensor, index) for name, tensor in tensors.items()}


def _put(tensor: torch.Tensor, index: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor:
    """`tensor` with the active clients' rows replaced by `rows`."""
    if index is None:
        return rows
    tensor[index] = rows
    return tensor
