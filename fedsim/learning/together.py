"""Local SGD for many clients at once: their weights stacked along a leading axis and
one vectorised step (torch.func's `vmap` over `grad_and_value` of a `functional_call`)
for all of them, where `training.train` takes one client after another.

Each client keeps exactly what it has one at a time: its own data, its own generator
(the same permutation and augmentation draws, in the same order), its own momentum,
its own proximal anchor, linear term and step correction (training.LocalHooks).
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

import os
import sys

import torch
from torch import nn

from fedsim.ground.choices import AUTO, ON
from fedsim.learning.tasks import Task
from fedsim.learning.training import (
    LocalHooks,
    TrainResult,
    TrainSettings,
    batches,
    sgd_direction,
    steps_of,
)


def wanted(vectorize: str, device: torch.device) -> bool:
    """Whether --vectorize asks clients training on `device` to train together: auto
    says yes on a GPU only (on two CPU cores the grouped convolutions vmap makes were
    slower than one client after another; docs/performance.md)."""
    return vectorize == ON or (vectorize == AUTO and device.type == "cuda")


# Of the memory this process's share of its device holds (the GPU's, or the machine's
# RAM by its CPUs), the part one group may fill: the rest is the data, the model, the
# framework's own and other processes'. From the device's total, not what is free at
# the time, so a machine sizes groups the same way every run (and gives the same numbers)
MEMORY_SHARE = 0.25
# What a client of a group holds per parameter: its weights, momentum, anchor, linear
# term or correction, gradient and updated weights
COPIES_PER_PARAMETER = 6
# Per activation a module outputs: itself, kept for the backward pass, its gradient and
# the temporaries between them
COPIES_PER_ACTIVATION = 3


def memory_budget(device: torch.device) -> int:
    """The bytes one group may fill: MEMORY_SHARE of what this process's share of the
    device holds (the share Ray gave it; all of it outside Ray)."""
    if device.type == "cuda":
        total, key, units = torch.cuda.get_device_properties(device).total_memory, "GPU", 1.0
    else:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        key, units = "CPU", float(os.cpu_count() or 1)
    share = 1.0
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        share = min(1.0, ray.get_runtime_context().get_assigned_resources().get(key, units) / units)
    return int(total * share * MEMORY_SHARE)


def client_bytes(model: nn.Module, task: Task, example: torch.Tensor, batch_size: int) -> int:
    """What one client of a group holds at once: its copies of the parameters, and the
    activations of a batch (measured from one example's pass through every module)."""
    parameters = sum(p.numel() * p.element_size() for p in model.parameters())
    outputs: list[int] = []

    def record(_module: nn.Module, _inputs: object, output: object) -> None:
        if isinstance(output, torch.Tensor):
            outputs.append(output.numel() * output.element_size())

    handles = [m.register_forward_hook(record) for m in model.modules()]
    try:
        with torch.no_grad():
            model(task.inputs(example[None]))
    finally:
        for handle in handles:
            handle.remove()
    per_example = sum(outputs) * COPIES_PER_ACTIVATION + example.numel() * 4  # as float32
    return parameters * COPIES_PER_PARAMETER + per_example * batch_size


def group_size(
    model: nn.Module, task: Task, example: torch.Tensor, batch_size: int, budget: int
) -> int:
    """How many clients train in one vectorised step: as many as `budget` bytes hold."""
    return max(1, budget // client_bytes(model, task, example, batch_size))


def why_not(model: nn.Module, settings: TrainSettings) -> str | None:
    """Why this model, trained so, cannot train clients together (None: it can)."""
    if any(True for _ in model.buffers()):
        return "the model has buffers (BatchNorm's running statistics), kept per client"
    if settings.adam:
        return "--client-optimizer adam trains one client at a time (the vectorised step is SGD's)"
    return None


def train_together(
    model: nn.Module,
    task: Task,
    starts: list[dict[str, torch.Tensor]],
    data: list[tuple[torch.Tensor, torch.Tensor]],
    settings: TrainSettings,
    generators: list[torch.Generator],
    hooks: list[LocalHooks],
    budget: int | None = None,
) -> tuple[list[dict[str, torch.Tensor]], list[TrainResult]]:
    """Train client k from weights `starts[k]` on `data[k]` with `generators[k]` and
    `hooks[k]` (declarative ones only), as many at a time as `budget` bytes hold (the
    device's: memory_budget); their trained parameters and results, in order."""
    trained: list[dict[str, torch.Tensor]] = []
    results: list[TrainResult] = []
    if not starts:
        return trained, results
    device = next(model.parameters()).device
    budget = memory_budget(device) if budget is None else budget
    size = group_size(model, task, data[0][0][0].to(device), settings.batch_size, budget)
    for first in range(0, len(starts), size):
        part = slice(first, first + size)
        group = _Group(model, task, starts[part], hooks[part], settings)
        weights, done = group.train(data[part], generators[part])
        trained += weights
        results += done
    return trained, results


class _Group:
    """Clients trained together: their parameters, momentum buffers, proximal anchors
    linear terms and step corrections, each stacked along a leading client axis."""

    def __init__(
        self,
        model: nn.Module,
        task: Task,
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
        self.linear = self._stacked_or_zeros([h.linear for h in hooks])
        self.corrections = self._stacked_or_zeros(
            [[h.correction[n] for n in self.names] if h.correction else None for h in hooks]
        )

        def loss_of(weights, anchor, mu, linear, examples, labels, mask):
            """One client's batch loss (padding weighs nothing), its proximal term added
            and its linear one (None: no client has one) subtracted."""
            scores = functional_call(model, weights, (task.inputs(examples),))
            per_example = task.loss(scores, labels, reduction="none")
            loss = (per_example * mask).sum() / mask.sum().clamp(min=1)
            drift = sum((weights[n] - anchor[n]).pow(2).sum() for n in self.names)
            loss = loss + mu / 2 * drift
            if linear is not None:
                loss = loss - sum((linear[n] * weights[n]).sum() for n in self.names)
            return loss

        linear_dim = None if self.linear is None else 0  # None is not vmapped over
        self.step_of = vmap(grad_and_value(loss_of), in_dims=(0, 0, 0, linear_dim, 0, 0, 0))

    def _stacked(self, per_client: list[list[torch.Tensor]]) -> dict[str, torch.Tensor]:
        """{name: the clients' tensors of that name, stacked}, from a list per client."""
        return {
            n: torch.stack([tensors[i].to(self.device) for tensors in per_client])
            for i, n in enumerate(self.names)
        }

    def _stacked_or_zeros(
        self, per_client: list[list[torch.Tensor] | None]
    ) -> dict[str, torch.Tensor] | None:
        """Stacked like `_stacked`, zeros for a client without (None: no client has any)."""
        if all(tensors is None for tensors in per_client):
            return None
        zeros = [torch.zeros_like(self.params[n][0]) for n in self.names]
        return self._stacked([zeros if t is None else t for t in per_client])

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
        examples = first.new_zeros((len(batches_now), size, *first.shape[1:]))
        labels = torch.zeros((len(batches_now), size), dtype=torch.long, device=self.device)
        mask = torch.zeros((len(batches_now), size), device=self.device)
        for row, (batch, batch_labels) in enumerate(batches_now):
            examples[row, : len(batch_labels)] = batch
            labels[row, : len(batch_labels)] = batch_labels
            mask[row, : len(batch_labels)] = 1.0
        params, anchors = _take(self.params, index), _take(self.anchors, index)
        mu = _rows(self.mu, index)
        linear = None if self.linear is None else _take(self.linear, index)
        grads, losses = self.step_of(params, anchors, mu, linear, examples, labels, mask)
        with torch.no_grad():
            for n in self.names:
                weight, buffer = params[n], _rows(self.momentum[n], index)
                direction, buffer = sgd_direction(
                    weight, grads[n], buffer, settings.momentum, settings.weight_decay
                )
                self.momentum[n] = _put(self.momentum[n], index, buffer)
                updated = weight.add(direction, alpha=-settings.lr)
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
