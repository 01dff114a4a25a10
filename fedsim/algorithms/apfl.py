"""APFL (Deng et al., arXiv 2003.13461, 2020): each client keeps a personal model v
and is judged by the mixture α·v + (1-α)·w of it and the global model w. A round
trains w as FedAvg does, then v: the gradient of v is α·∇f(v̄) at the mixture
v̄ = α·v + (1-α)·w (w the client's trained model, fixed), which is local SGD on v̄
itself with the learning rate α²·lr (exact for SGD with momentum; weight decay, if
set, acts on v̄). The official code (lgcollins/FedRep, models/Update.py
LocalUpdateAPFL) interleaves the two batch by batch; here v follows w's epochs, on
as many batches of its own stream."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from fedsim.algorithms.base import Algorithm
from fedsim.algorithms.context import ClientContext
from fedsim.algorithms.personal import Personal, keep
from fedsim.ground import messages, streams
from fedsim.ground.option import Bounds, Option

if TYPE_CHECKING:
    import torch
    from flwr.app import RecordDict
    from torch import nn

    from fedsim.learning.trainers import LocalWork, Trained, Trainer
    from fedsim.learning.training import TrainResult, TrainSettings


class APFL(Personal):
    source = "Deng et al., arXiv 2003.13461, 2020"
    apfl_alpha = Option(
        0.75,
        "α: a client is judged by α·(its own model) + (1-α)·(the global model) "
        "(0.75: FedRep's code)",
        Bounds(0, 1, low_open=True),
    )

    def own(self, model: nn.Module) -> list[str]:
        return list(model.state_dict())

    def starting_model(self, ctx: ClientContext) -> tuple[nn.Module, dict[str, torch.Tensor]]:
        """The global model's training starts from the model sent."""
        return Algorithm.starting_model(self, ctx)

    def train_group(self, ctxs: list[ClientContext], trainer: Trainer) -> list[Trained]:
        """FedAvg's local training of w, then each client's v at the mixture with it."""
        trained: dict[int, dict[str, torch.Tensor]] = {}

        def keep_trained(ctx, model, result, work):
            trained[ctx.pid] = {k: v.detach().clone() for k, v in model.state_dict().items()}
            return self.finish(ctx, model, result, work)

        def mixture(ctx: ClientContext) -> LocalWork:
            from fedsim.learning.trainers import LocalWork
            from fedsim.learning.training import LocalHooks

            model, own = self.personalised(ctx)
            start = self.mixed(own, trained[ctx.pid])
            model.load_state_dict(start)
            generator = ctx.generator(streams.PERSONAL_TRAINING)
            return LocalWork(start, *self.training_data(ctx), generator, LocalHooks())

        def unmixed(ctx, model, result: TrainResult, work) -> RecordDict:
            """v from the trained mixture: (v̄ - (1-α)·w) / α."""
            global_part = trained[ctx.pid]
            alpha = self.apfl_alpha
            return keep(
                {
                    name: (mix - (1 - alpha) * global_part[name]) / alpha
                    if mix.is_floating_point()
                    else mix
                    for name, mix in model.state_dict().items()
                }
            )

        done = trainer.train(ctxs, self.local_work, keep_trained, self.settings())
        return self.with_own_copy(ctxs, done, trainer, mixture, unmixed, self._mixture_steps())

    def _mixture_steps(self, settings: TrainSettings | None = None) -> TrainSettings:
        """Local training of the mixture: v's step α·lr·α∇f(v̄) taken on v̄."""
        settings = settings or self.settings()
        return dataclasses.replace(settings, lr=settings.lr * self.apfl_alpha**2)

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
        """A client that never trained starts v at the global model (so the mixture is
        the global model) and trains v for --local-epochs."""
        self.fine_tune(ctx, model, self._mixture_steps(self.for_epochs(self.new_client_epochs())))
