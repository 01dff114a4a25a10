"""Ditto (Li et al., ICML 2021): FedAvg's training of the global model, and beside it
each client's own copy of the whole model, trained on its data with
λ/2 · ||v - w_global||² pulling it toward the model it was sent; the copy is judged."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedsim.algorithms.context import ClientContext
from fedsim.algorithms.personal import OwnCopy, pulled
from fedsim.ground import messages, streams
from fedsim.ground.option import Option, at_least

if TYPE_CHECKING:
    from torch import nn

    from fedsim.learning.trainers import LocalWork, Trained, Trainer


class Ditto(OwnCopy):
    source = "Li et al., ICML 2021"
    ditto_lambda = Option(
        0.1, "λ: how strongly a client's own copy is pulled toward the global model", at_least(0)
    )

    def train_group(self, ctxs: list[ClientContext], trainer: Trainer) -> list[Trained]:
        """FedAvg's local training, then each client's copy."""
        done = super().train_group(ctxs, trainer)
        return self.with_own_copy(ctxs, done, trainer, self._copy_work, self._kept, self.settings())

    def _copy_work(self, ctx: ClientContext) -> LocalWork:
        from fedsim.learning.trainers import LocalWork

        model, start = self.personalised(ctx)
        sent = ctx.tensors(ctx.content[messages.ARRAYS])
        anchor = [sent[name].to(p.device) for name, p in model.named_parameters()]
        generator = ctx.generator(streams.PERSONAL_TRAINING)
        return LocalWork(
            start, *self.training_data(ctx), generator, pulled(anchor, self.ditto_lambda)
        )

    def adapt_new(self, ctx: ClientContext, model: nn.Module) -> None:
        """A client that never trained trains a copy from the global model, pulled
        toward it (its --local-epochs)."""
        self.fine_tune_near(
            ctx, model, self.for_epochs(self.new_client_epochs()), self.ditto_lambda
        )

    def _kept(self, ctx, model, result, work):
        return self.memory(model)
