"""pFedMe (T. Dinh et al., NeurIPS 2020): each client's personalised model θ is the
Moreau envelope's minimiser, argmin f(θ) + λ/2·||θ - w||², found with K steps of
--pfedme-lr on each batch; the local model w then moves toward it,
w ← w - lr·λ·(w - θ) (plain steps of --lr: the run's momentum and weight decay are
not used). The server moves the model β of the way to the clients' average (FedAvg's,
example-weighted): (1-β)·w + β·average (--pfedme-beta; 1 is FedAvg's). A client is
judged by its θ from its last round; a client that never trained finds its θ from
the global model (λ's proximal term, --local-epochs of --pfedme-lr)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np
from flwr.app import Array, ArrayRecord, RecordDict
from flwr.serverapp import strategy as strategies
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from fedsim.algorithms.base import SAMPLE_ALL, FromTheSentModel
from fedsim.algorithms.context import ClientContext, ClientResult
from fedsim.algorithms.personal import OwnCopy, keep
from fedsim.ground.option import Option, at_least, greater_than

if TYPE_CHECKING:
    import torch
    from torch import nn

    from fedsim.learning.tasks import Task
    from fedsim.learning.trainers import LocalWork
    from fedsim.learning.training import LocalHooks, TrainResult


class PFedMe(OwnCopy):
    source = "T. Dinh et al., NeurIPS 2020"
    trains_together = False  # its step solves an inner problem, not said as data
    pfedme_lambda = Option(15.0, "λ: how strongly θ is tied to the local model w", greater_than(0))
    pfedme_steps = Option(5, "K: steps toward θ on each batch", at_least(1))
    pfedme_lr = Option(0.01, "the learning rate of the steps toward θ", greater_than(0))
    pfedme_beta = Option(
        1.0, "β: the server moves the model β of the way to the clients' average", greater_than(0)
    )

    def strategy(self) -> strategies.Strategy:
        if self.pfedme_beta == 1:
            return super().strategy()  # FedAvg's, exactly
        return Blended(self.pfedme_beta, **SAMPLE_ALL)

    def hooks(self, ctx: ClientContext, model: nn.Module) -> LocalHooks:
        from fedsim.learning.training import LocalHooks

        step = _MoreauStep(ctx.task, model, self)
        return LocalHooks(step=step)

    def finish(
        self, ctx: ClientContext, model: nn.Module, result: TrainResult, work: LocalWork
    ) -> ClientResult:
        """The reply of w; the client keeps θ."""
        made = super().finish(ctx, model, result, work)
        made.state = keep({**model.state_dict(), **work.hooks.step.personal})
        return made

    def adapt_new(self, ctx: ClientContext, model: nn.Module) -> None:
        settings = self.for_epochs(self.new_client_epochs())
        self.fine_tune_near(
            ctx, model, dataclasses.replace(settings, lr=self.pfedme_lr), self.pfedme_lambda
        )


class Blended(FromTheSentModel):
    """FedAvg's example-weighted average, taken β of the way from the model sent."""

    def __init__(self, beta: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.beta = beta

    def update(self, sent: ArrayRecord, contents: list[RecordDict]) -> ArrayRecord:
        average = aggregate_arrayrecords(contents, self.weighted_by_key)
        blended = {}
        for key, array in sent.items():
            start = array.numpy()
            value = (1 - self.beta) * start + self.beta * average[key].numpy()
            blended[key] = Array(np.asarray(value).astype(start.dtype))
        return ArrayRecord(blended)


class _MoreauStep:
    """A client's θ (kept through its round) and its step on a batch: K steps of θ on
    f + λ/2·||θ - w||², then w's step toward θ."""

    def __init__(self, task: Task, model: nn.Module, algorithm: PFedMe) -> None:
        self.task, self.lr = task, algorithm.settings().lr
        self.lam, self.steps, self.inner_lr = (
            algorithm.pfedme_lambda,
            algorithm.pfedme_steps,
            algorithm.pfedme_lr,
        )
        self.names = [name for name, p in model.named_parameters() if p.requires_grad]
        weights = dict(model.named_parameters())
        self.theta = {name: weights[name].detach().clone() for name in self.names}

    @property
    def personal(self) -> dict[str, torch.Tensor]:
        return dict(self.theta)

    def __call__(self, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor):
        import torch
        from torch.func import functional_call

        weights = dict(model.named_parameters())
        local = {name: weights[name].detach() for name in self.names}
        for _ in range(self.steps):
            theta = {name: t.requires_grad_(True) for name, t in self.theta.items()}
            loss = self.task.loss(functional_call(model, theta, (inputs,)), labels)
            drift = sum((theta[n] - local[n]).pow(2).sum() for n in self.names)
            grads = torch.autograd.grad(loss + self.lam / 2 * drift, list(theta.values()))
            with torch.no_grad():
                self.theta = {
                    name: (t - self.inner_lr * g).detach()
                    for (name, t), g in zip(theta.items(), grads, strict=True)
                }
        with torch.no_grad():
            for name in self.names:
                weights[name].sub_(self.lr * self.lam * (weights[name] - self.theta[name]))
        return loss.detach()
