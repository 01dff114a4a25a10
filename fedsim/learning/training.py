"""Local training and evaluation: the plain PyTorch loops every client runs, for any
task (fedsim.learning.tasks: what enters the model, the loss, what is correct).

Data arrives as tensors already in memory (the cache's dtype); batches are drawn by
index with a seeded generator and made the model's input on the fly, so there is no
DataLoader, no worker process and no decoding in the loop.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from flwr.app import ArrayRecord
from torch import nn

from fedsim.ground.choices import ADAM
from fedsim.ground.config import RunConfig
from fedsim.learning import models
from fedsim.learning.data import DecodedDataset
from fedsim.learning.tasks import Task


@dataclass(frozen=True)
class TrainSettings:
    epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float = 0.0
    augment: bool = False
    steps: int | None = None  # batches a round, instead of `epochs`
    adam: bool = False  # Adam instead of SGD (momentum unused)


def train_settings(cfg: RunConfig) -> TrainSettings:
    """Local training as the options set it."""
    return TrainSettings(
        epochs=cfg.local_epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        augment=cfg.augment,
        steps=cfg.local_steps,
        adam=cfg.client_optimizer == ADAM,
    )


@dataclass(frozen=True)
class LocalHooks:
    """What an algorithm changes in local SGD (fedsim.algorithms). Said as data where
    it can be, so that clients trained together (fedsim.learning.together) apply it
    too: a proximal term mu/2 · ||w - anchor||² added to each batch's loss (FedProx),
    a linear term <g, w> subtracted from it (FedDyn's, with its proximal term), and a
    correction subtracted from the named weights after each optimizer step (SCAFFOLD's
    lr · (c - c_i)). Anything else is a callable, and trains one client at a time: a
    term added to the loss, a change made to the model after each step, or the whole
    step (`step`: a batch in, its loss out, the weights changed by the algorithm's own
    rule: Per-FedAvg's two-batch step, pFedMe's inner problem)."""

    proximal: tuple[float, list[torch.Tensor]] | None = None  # (mu, the parameters' anchor)
    linear: list[torch.Tensor] | None = None  # g, one tensor per parameter
    correction: dict[str, torch.Tensor] | None = None
    extra_loss: Callable[[nn.Module], torch.Tensor] | None = None
    after_step: Callable[[nn.Module], None] | None = None
    step: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor] | None = None

    @property
    def declarative(self) -> bool:
        """Whether only data says what changes (clients can then train together)."""
        return self.extra_loss is None and self.after_step is None and self.step is None

    def loss_term(self) -> Callable[[nn.Module], torch.Tensor] | None:
        """What is added to each batch's loss: the callable, or the terms said as data."""
        if self.extra_loss is not None:
            return self.extra_loss
        proximal = proximal_term(self.proximal[1], self.proximal[0]) if self.proximal else None
        if self.linear is None:
            return proximal
        gradient = self.linear

        def term(model: nn.Module) -> torch.Tensor:
            params = model.parameters()
            linear = sum((g * p).sum() for g, p in zip(gradient, params, strict=True))
            return (proximal(model) if proximal else 0.0) - linear

        return term

    def step_change(self, model: nn.Module) -> Callable[[nn.Module], None] | None:
        if self.after_step is not None or self.correction is None:
            return self.after_step
        correction, weights = self.correction, model.state_dict()  # views of its tensors

        @torch.no_grad()
        def correct(model: nn.Module) -> None:
            for key, step in correction.items():
                weights[key].sub_(step)

        return correct


@dataclass(frozen=True)
class TrainResult:
    loss: float  # mean training loss over the local steps
    steps: int  # optimizer steps taken (FedNova and SCAFFOLD need it)


class SGD:
    """torch.optim.SGD's update (momentum, weight decay; no dampening, no Nesterov),
    written out because constructing any torch.optim optimizer imports torch._dynamo:
    seconds and a hundred-odd MB in every fresh client process (docs/performance.md),
    for ten lines of arithmetic."""

    def __init__(
        self, params: list[nn.Parameter], lr: float, momentum: float, weight_decay: float
    ) -> None:
        self.params, self.lr, self.momentum, self.weight_decay = params, lr, momentum, weight_decay
        self.buffers: list[torch.Tensor | None] = [None] * len(params)

    @torch.no_grad()
    def step(self) -> None:
        """Apply the gradients, then drop them (zero_grad(set_to_none=True))."""
        for index, param in enumerate(self.params):
            if param.grad is None:
                continue
            direction, self.buffers[index] = sgd_direction(
                param, param.grad, self.buffers[index], self.momentum, self.weight_decay
            )
            param.add_(direction, alpha=-self.lr)
            param.grad = None


class Adam:
    """torch.optim.Adam's update (betas 0.9 and 0.999, eps 1e-8, L2 weight decay, no
    amsgrad), written out for the reason SGD is; its moments start at zero each round."""

    def __init__(self, params: list[nn.Parameter], lr: float, weight_decay: float) -> None:
        self.params, self.lr, self.weight_decay = params, lr, weight_decay
        self.betas, self.eps, self.count = (0.9, 0.999), 1e-8, 0
        self.moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in params]

    @torch.no_grad()
    def step(self) -> None:
        self.count += 1
        (beta1, beta2), count = self.betas, self.count
        step_size = self.lr / (1 - beta1**count)
        root = (1 - beta2**count) ** 0.5
        for param, (mean, square) in zip(self.params, self.moments, strict=True):
            if param.grad is None:
                continue
            grad = param.grad
            if self.weight_decay:
                grad = grad.add(param, alpha=self.weight_decay)
            mean.lerp_(grad, 1 - beta1)
            square.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            param.addcdiv_(mean, (square.sqrt() / root).add_(self.eps), value=-step_size)
            param.grad = None


def make_optimizer(model: nn.Module, settings: TrainSettings) -> SGD | Adam:
    """The clients' optimizer as --client-optimizer says, fresh for a round."""
    params = list(model.parameters())
    if settings.adam:
        return Adam(params, settings.lr, settings.weight_decay)
    return SGD(params, settings.lr, settings.momentum, settings.weight_decay)


def sgd_direction(
    param: torch.Tensor,
    grad: torch.Tensor,
    buffer: torch.Tensor | None,
    momentum: float,
    weight_decay: float,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """torch.optim.SGD's step direction for one tensor (no dampening, no Nesterov): the
    gradient with weight decay, through the momentum buffer, which is updated in place
    (made on the first step); and that buffer. Clients trained together
    (fedsim.learning.together) take the same step on their stacked weights."""
    if weight_decay:
        grad = grad.add(param, alpha=weight_decay)
    if not momentum:
        return grad, buffer
    if buffer is None:
        buffer = grad.clone()
    else:
        buffer.mul_(momentum).add_(grad)
    return buffer, buffer


def augment_batch(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random 32x32 crop of the 4-pixel zero-padded image, then a random horizontal flip."""
    n, _, h, w = images.shape
    padded = F.pad(images, (4, 4, 4, 4))
    top = torch.randint(0, 9, (n, 1), generator=generator)
    left = torch.randint(0, 9, (n, 1), generator=generator)
    rows = (top + torch.arange(h)).to(images.device)
    cols = (left + torch.arange(w)).to(images.device)
    batch = torch.arange(n, device=images.device)[:, None, None, None]
    channel = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
    cropped = padded[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]
    flip = (torch.rand(n, generator=generator) < 0.5).to(images.device)
    return torch.where(flip[:, None, None, None], cropped.flip(3), cropped)


def train(
    model: nn.Module,
    task: Task,
    examples: torch.Tensor,
    labels: torch.Tensor,
    settings: TrainSettings,
    generator: torch.Generator,
    hooks: LocalHooks = LocalHooks(),
) -> TrainResult:
    """Local training, as the algorithm's hooks change it."""
    model.train()
    optimizer = make_optimizer(model, settings)
    extra_loss, after_step = hooks.loss_term(), hooks.step_change(model)
    total, steps = torch.zeros((), device=examples.device), 0
    for batch, batch_labels in batches(examples, labels, settings, generator):
        if hooks.step is not None:  # the algorithm's own step
            total += hooks.step(model, task.inputs(batch), batch_labels).detach()
            steps += 1
            continue
        loss = task.loss(model(task.inputs(batch)), batch_labels)
        if extra_loss is not None:
            loss = loss + extra_loss(model)
        loss.backward()
        optimizer.step()
        if after_step is not None:
            after_step(model)
        total += loss.detach()
        steps += 1
    return TrainResult(loss=float(total) / max(steps, 1), steps=steps)


def batches(
    examples: torch.Tensor,
    labels: torch.Tensor,
    settings: TrainSettings,
    generator: torch.Generator,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """A client's local batches: each epoch a permutation from its generator, then
    (with --augment) each batch cropped and flipped with draws from the same generator;
    with `steps`, epochs until that many batches are drawn (the last epoch cut short)."""
    left = steps_of(len(labels), settings)
    while left:
        order = torch.randperm(len(labels), generator=generator).to(examples.device)
        for start in range(0, len(labels), settings.batch_size):
            index = order[start : start + settings.batch_size]
            batch = examples[index]
            if settings.augment:
                batch = augment_batch(batch, generator)
            yield batch, labels[index]
            left -= 1
            if not left:
                return


def steps_of(examples: int, settings: TrainSettings) -> int:
    """How many optimizer steps `batches` gives a client of `examples`."""
    if not examples:
        return 0
    if settings.steps is not None:
        return settings.steps
    return settings.epochs * -(-examples // settings.batch_size)


def proximal_term(anchor: list[torch.Tensor], mu: float) -> Callable[[nn.Module], torch.Tensor]:
    """FedProx (Li et al., 2020): mu/2 · ||w - w_global||², added to each batch's loss."""

    def term(model: nn.Module) -> torch.Tensor:
        drift = sum((p - a).pow(2).sum() for p, a in zip(model.parameters(), anchor, strict=True))
        return mu / 2 * drift

    return term


# The central evaluation's batch: the run's (CentralEvaluator), the plain loop's
# (bench/reference.py) and per_class_accuracy.py's, so their figures agree to the digit.
CENTRAL_BATCH_SIZE = 500


@contextmanager
def only_trained(model: nn.Module, names: Collection[str]) -> Iterator[None]:
    """Train only the parameters named (the others get no gradient, so the optimizer
    leaves them as they are: FedRep's head epochs, then its body epochs); afterwards,
    whatever happened, the others train again, and a parameter the model itself
    keeps fixed stays fixed."""
    frozen = [p for name, p in model.named_parameters() if name not in names and p.requires_grad]
    try:
        for param in frozen:
            param.requires_grad_(False)
        yield
    finally:
        for param in frozen:
            param.requires_grad_(True)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    task: Task,
    examples: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int = 1000,
) -> tuple[float, float]:
    """The task's mean loss and accuracy over the whole set."""
    model.eval()
    loss_sum, correct = 0.0, 0
    for start in range(0, len(labels), batch_size):
        batch_labels = labels[start : start + batch_size]
        scores = model(task.inputs(examples[start : start + batch_size]))
        loss_sum += float(task.loss(scores, batch_labels, reduction="sum"))
        correct += int(task.right(scores, batch_labels).sum())
    count = max(len(labels), 1)
    return loss_sum / count, correct / count


class CentralEvaluator:
    """Evaluates the global model on the whole test split in the driver process and,
    where the data names groups, on each group's test examples."""

    def __init__(self, cfg: RunConfig, dataset: DecodedDataset) -> None:
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.task = dataset.task
        self.model = models.build_model(cfg.model, task=self.task).to(self.device)
        self.examples = torch.from_numpy(np.array(dataset.test_x)).to(self.device)
        self.labels = torch.from_numpy(np.array(dataset.test_y)).to(self.device)
        self.names = dataset.groups
        self.test_groups = None if dataset.test_groups is None else np.asarray(dataset.test_groups)
        if self.test_groups is not None:  # each group's test examples: counted once
            self.group_sizes = np.bincount(self.test_groups, minlength=len(self.names))

    def __call__(self, arrays: ArrayRecord) -> tuple:
        """Loss and accuracy; with groups, each group's (name, examples, loss, accuracy)
        too, from the same pass over the test split."""
        self.model.load_state_dict(arrays.to_torch_state_dict())
        if self.test_groups is None:
            args = (self.model, self.task, self.examples, self.labels, CENTRAL_BATCH_SIZE)
            return evaluate(*args)
        losses, rights = per_example(self.model, self.task, self.examples, self.labels)
        count, size = max(len(losses), 1), len(self.names)
        group_losses = np.bincount(self.test_groups, losses, minlength=size)
        group_rights = np.bincount(self.test_groups, rights, minlength=size)
        groups = [
            (name, int(n), loss / max(n, 1), right / max(n, 1))
            for name, n, loss, right in zip(
                self.names, self.group_sizes, group_losses, group_rights, strict=True
            )
        ]
        return float(losses.sum()) / count, float(rights.sum()) / count, groups


@torch.no_grad()
def per_example(
    model: nn.Module, task: Task, examples: torch.Tensor, labels: torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    """Each example's loss (float64) and whether it is right (0 or 1), a batch of
    CENTRAL_BATCH_SIZE at a time."""
    model.eval()
    losses, rights = [], []
    for start in range(0, len(labels), CENTRAL_BATCH_SIZE):
        batch_labels = labels[start : start + CENTRAL_BATCH_SIZE]
        scores = model(task.inputs(examples[start : start + CENTRAL_BATCH_SIZE]))
        losses.append(task.loss(scores, batch_labels, reduction="none").double().cpu().numpy())
        rights.append(task.right(scores, batch_labels).double().cpu().numpy())
    if not losses:
        return np.zeros(0), np.zeros(0)
    return np.concatenate(losses), np.concatenate(rights)
