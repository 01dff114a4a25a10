"""Per-FedAvg, first-order (Fallah et al., NeurIPS 2020): FedAvg whose local step is
MAML's, so that the global model is one that a client's single gradient step makes
good for it. Each batch is split in two halves (as PFLlib's does): the first half's
gradient takes a step of --lr from the weights θ, the second half's gradient at that
point moves θ by β (--perfedavg-beta; the first-order version drops the Hessian
term). Before it is judged, a client takes one step of --lr on one batch of its
training split from the global model. It keeps nothing between rounds."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from fedsim.algorithms.context import ClientContext
from fedsim.algorithms.personal import Personal
from fedsim.ground.option import Option, greater_than

if TYPE_CHECKING:
    import torch
    from torch import nn

    from fedsim.learning.tasks import Task
    from fedsim.learning.training import LocalHooks, TrainSettings


class PerFedAvg(Personal):
    source = "Fallah et al., NeurIPS 2020 (Per-FedAvg FO)"
    trains_together = False  # its step is two gradient steps, not said as data
    perfedavg_beta = Option(
        None,
        "β: the learning rate of the step at the adapted point (auto: --lr)",
        greater_than(0),
        type=float,
    )

    def hooks(self, ctx: ClientContext, model: nn.Module) -> LocalHooks:
        from fedsim.learning.training import LocalHooks

        settings = self.settings()
        beta = settings.lr if self.perfedavg_beta is None else self.perfedavg_beta
        step = _MetaStep(ctx.task, model, settings.lr, beta, settings)
        return LocalHooks(step=step)

    def adapt(self, ctx: ClientContext, model: nn.Module) -> None:
        """One step of --lr on one batch (of --batch-size) of its training split."""
        one_step = dataclasses.replace(self.settings(), steps=1, momentum=0.0, weight_decay=0.0)
        self.fine_tune(ctx, model, one_step)


class _MetaStep:
    """One client's first-order MAML step on a batch split in two halves; the step at
    the adapted point has the run's momentum and weight decay (a momentum buffer per
    client and round), the adapting one none."""

    def __init__(
        self, task: Task, model: nn.Module, alpha: float, beta: float, settings: TrainSettings
    ) -> None:
        from fedsim.learning.training import SGD

        self.task = task
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.inner = SGD(self.params, alpha, 0.0, 0.0)
        self.outer = SGD(self.params, beta, settings.momentum, settings.weight_decay)

    def __call__(self, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor):
        import torch

        half = len(labels) // 2
        if not half:  # a batch of one example has no second half: no step
            return torch.zeros((), device=labels.device)
        start = [p.detach().clone() for p in self.params]
        self.task.loss(model(inputs[:half]), labels[:half]).backward()
        self.inner.step()
        loss = self.task.loss(model(inputs[half:]), labels[half:])
        loss.backward()
        with torch.no_grad():
            for param, weight in zip(self.params, start, strict=True):
                param.copy_(weight)  # back to θ, its gradient the adapted point's
        self.outer.step()
        return loss
