"""APFL (Deng et al., arXiv 2003.13461, 2020): each client keeps a personal model v
and is judged by the mixture v̄ = α·v + (1-α)·w of it and the global model w. Each
local step, on one batch, takes w's step as FedAvg does and v's step
v ← v - lr·∇_v f(v̄) = v - lr·α·∇f(v̄), both at the weights before the step (the
paper's Algorithm 1, with α fixed; FedRep's code, models/Update.py LocalUpdateAPFL,
does the same per batch). Each step is the run's optimizer's (momentum, weight decay),
with buffers of its own."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from fedsim.algorithms.context import ClientContext, ClientResult
from fedsim.algorithms.personal import OWN, OwnCopy, keep
from fedsim.ground import messages
from fedsim.ground.option import Bounds, Option

if TYPE_CHECKING:
    import torch
    from torch import nn

    from fedsim.learning.tasks import Task
    from fedsim.learning.trainers import LocalWork
    from fedsim.learning.training import LocalHooks, TrainResult, TrainSettings


class APFL(OwnCopy):
    source = "Deng et al., arXiv 2003.13461, 2020"
    trains_together = False  # each step trains two models, not said as data
    apfl_alpha = Option(
        0.75,
        "α: a client is judged by α·(its own model) + (1-α)·(the global model) "
        "(0.75: FedRep's code)",
        Bounds(0, 1, low_open=True),
    )

    def hooks(self, ctx: ClientContext, model: nn.Module) -> LocalHooks:
        from fedsim.learning.training import LocalHooks

        if OWN in ctx.state:
            personal = ctx.tensors(ctx.state[OWN])
        else:  # a client's first round: v starts at the model sent
            personal = {name: p.detach().clone() for name, p in model.named_parameters()}
        step = _BothSteps(ctx.task, model, personal, self.apfl_alpha, self.settings())
        return LocalHooks(step=step)

    def finish(
        self, ctx: ClientContext, model: nn.Module, result: TrainResult, work: LocalWork
    ) -> ClientResult:
        """The reply of w; the client keeps v."""
        made = super().finish(ctx, model, result, work)
        made.state = keep({**model.state_dict(), **work.hooks.step.personal})
        return made

    def mixed(
        self, own: dict[str, torch.Tensor], shared: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """α·own + (1-α)·shared, weight by weight (counters: the shared model's)."""
        alpha = self.apfl_alpha
        return {
            name: alpha * own[name] + (1 - alpha) * weight if weight.is_floating_point() else weight
            for name, weight in shared.items()
        }

    def adapt(self, ctx: ClientContext, model: nn.Module) -> None:
        """The client's v, mixed with the global model it was sent."""
        sent = ctx.tensors(ctx.content[messages.ARRAYS])
        model.load_state_dict(self.mixed(model.state_dict(), sent))

    def adapt_new(self, ctx: ClientContext, model: nn.Module) -> None:
        """A client that never trained starts v at the global model w (the mixture is
        then w) and trains v for --local-epochs, w fixed: v's step lr·α·∇f(v̄) moves the
        mixture by lr·α²·∇f(v̄): SGD on the mixture at lr·α² (with momentum too; exact
        without weight decay)."""
        settings = self.for_epochs(self.new_client_epochs())
        mixture = dataclasses.replace(settings, lr=settings.lr * self.apfl_alpha**2)
        self.fine_tune(ctx, model, mixture)


class _BothSteps:
    """One client's w (the process's model) and v (`personal`), each stepped on every
    batch at the weights before the step, each with an optimizer of its own."""

    def __init__(
        self,
        task: Task,
        model: nn.Module,
        personal: dict[str, torch.Tensor],
        alpha: float,
        settings: TrainSettings,
    ) -> None:
        from torch import nn

        from fedsim.learning.training import make_optimizer

        self.task, self.alpha = task, alpha
        self.names = [name for name, p in model.named_parameters() if p.requires_grad]
        device = next(model.parameters()).device
        self.own = nn.ParameterList(personal[name].to(device).clone() for name in self.names)
        self.optimizer = make_optimizer(model, settings)
        self.own_optimizer = make_optimizer(self.own, settings)

    @property
    def personal(self) -> dict[str, torch.Tensor]:
        return {name: own.detach() for name, own in zip(self.names, self.own, strict=True)}

    def __call__(self, model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor):
        from torch.func import functional_call

        weights = dict(model.named_parameters())
        mixture = {
            name: self.alpha * own + (1 - self.alpha) * weights[name].detach()
            for name, own in zip(self.names, self.own, strict=True)
        }
        self.task.loss(functional_call(model, mixture, (inputs,)), labels).backward()
        loss = self.task.loss(model(inputs), labels)
        loss.backward()
        self.optimizer.step()
        self.own_optimizer.step()
        return loss.detach()
