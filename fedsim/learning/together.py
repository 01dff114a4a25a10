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

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from fedsim.ground.config import AUTO, ON
from fedsim.learning.training import (
    LocalHooks,
    TrainResult,
    TrainSettings,
    augment_batch,
    normalize,
)


def wanted(vectorize: str, device: torch.device) -> bool:
    """Whether --vectorize asks clients training on `device` to train together: auto
    says yes on a GPU only (on two CPU cores the grouped convolutions vmap makes were
    slower than one client after another; docs/performance.md)."""
    return vectorize == ON or (vectorize == AUTO and device.type == "cuda")


# At most this many clients in one vectorised step: the activations of a group are
# this many clients' batches at once (64 × 64 CIFAR-10 images through the quickstart
# CNN: about 40 MB), and a larger group gains nothing measurable on a CPU
MAX_TOGETHER = 64


def why_not(model: nn.Module) -> str | None:
    """Why this model cannot train clients together (None: it can)."""
    if any(True for _ in model.buffers()):
        return "the model has buffers (BatchNorm's running statistics), kept per client"
    return None


def _batches(
    images: torch.Tensor, labels: torch.Tensor, settings: TrainSettings, generator: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One client's batches in training.train's order, drawn from its generator as
    training.train draws them."""
    for _ in range(settings.epochs):
        order = torch.randperm(len(labels), generator=generator).to(images.device)
        for start in range(0, len(labels), settings.batch_size):
            index = order[start : start + settings.batch_size]
            batch = images[index]
            if settings.augment:
                batch = augment_batch(batch, generator)
            yield batch, labels[index]


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
        group = slice(first, first + MAX_TOGETHER)
        weights, done = _group(
            model, starts[group], data[group], settings, generators[group], hooks[group]
        )
        trained += weights
        results += done
    return trained, results


def _group(
    model: nn.Module,
    starts: list[dict[str, torch.Tensor]],
    data: list[tuple[torch.Tensor, torch.Tensor]],
    settings: TrainSettings,
    generators: list[torch.Generator],
    hooks: list[LocalHooks],
) -> tuple[list[dict[str, torch.Tensor]], list[TrainResult]]:
    from torch.func import functional_call, grad_and_value, vmap

    model.train()
    names = [name for name, _ in model.named_parameters()]
    device = next(model.parameters()).device
    clients, batch_size = len(starts), settings.batch_size
    params = {n: torch.stack([s[n].to(device) for s in starts]) for n in names}
    momentum = {n: torch.zeros_like(p) for n, p in params.items()}
    mu = torch.tensor([h.proximal[0] if h.proximal else 0.0 for h in hooks], device=device)
    anchors = {
        n: torch.stack(
            [
                h.proximal[1][i] if h.proximal else starts[k][n].to(device)
                for k, h in enumerate(hooks)
            ]
        )
        for i, n in enumerate(names)
    }
    corrections = None
    if any(h.correction is not None for h in hooks):
        corrections = {
            n: torch.stack(
                [h.correction[n] if h.correction else torch.zeros_like(params[n][0]) for h in hooks]
            )
            for n in names
        }

    def loss_of(weights, anchor, mu_k, images, labels, mask):
        logits = functional_call(model, weights, (normalize(images),))
        per_example = F.cross_entropy(logits, labels, reduction="none")
        loss = (per_example * mask).sum() / mask.sum().clamp(min=1)
        drift = sum((weights[n] - anchor[n]).pow(2).sum() for n in names)
        return loss + mu_k / 2 * drift

    step_of = vmap(grad_and_value(loss_of))
    sizes = [len(labels) for _, labels in data]
    steps = [settings.epochs * math.ceil(size / batch_size) for size in sizes]
    streams = [
        _batches(images, labels, settings, g)
        for (images, labels), g in zip(data, generators, strict=True)
    ]
    totals = torch.zeros(clients, device=device)
    image_shape = data[0][0].shape[1:]
    for step in range(max(steps, default=0)):
        active = [k for k in range(clients) if step < steps[k]]
        images = torch.zeros(
            (len(active), batch_size, *image_shape), dtype=data[0][0].dtype, device=device
        )
        labels = torch.zeros((len(active), batch_size), dtype=torch.long, device=device)
        mask = torch.zeros((len(active), batch_size), device=device)
        for row, k in enumerate(active):
            batch, batch_labels = next(streams[k])
            images[row, : len(batch_labels)] = batch
            labels[row, : len(batch_labels)] = batch_labels
            mask[row, : len(batch_labels)] = 1.0
        index = None if len(active) == clients else torch.tensor(active, device=device)
        grads, losses = step_of(
            _take(params, index), _take(anchors, index), _rows(mu, index), images, labels, mask
        )
        with torch.no_grad():
            for n in names:
                weight, grad = _rows(params[n], index), grads[n]
                if settings.weight_decay:
                    grad = grad.add(weight, alpha=settings.weight_decay)
                if settings.momentum:
                    grad = _rows(momentum[n], index).mul(settings.momentum).add(grad)
                    momentum[n] = _put(momentum[n], index, grad)
                updated = weight.add(grad, alpha=-settings.lr)
                if corrections is not None:
                    updated = updated - _rows(corrections[n], index)
                params[n] = _put(params[n], index, updated)
            totals = _put(totals, index, _rows(totals, index) + losses.detach())
    trained = [{n: params[n][k] for n in names} for k in range(clients)]
    results = [
        TrainResult(loss=float(totals[k]) / max(steps[k], 1), steps=steps[k])
        for k in range(clients)
    ]
    return trained, results


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
