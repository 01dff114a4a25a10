"""FedRep (Collins et al., ICML 2021): each client keeps its own head; in a round it
first trains its head with the shared body fixed (--head-epochs), then the body with
its head fixed (--local-epochs); the bodies are averaged."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from fedsim.algorithms.context import ClientContext
from fedsim.algorithms.personal import OwnHead
from fedsim.ground.option import Option, at_least

if TYPE_CHECKING:
    from fedsim.learning.trainers import LocalWork, Trained, Trainer


class FedRep(OwnHead):
    source = "Collins et al., ICML 2021"
    # A phase trains some parameters only, which clients trained together cannot say
    trains_together = False
    head_epochs = Option(
        10, "epochs a client trains its head, the body fixed, before its body epochs", at_least(1)
    )

    def new_client_epochs(self) -> int:
        return self.head_epochs

    def train_group(self, ctxs: list[ClientContext], trainer: Trainer) -> list[Trained]:
        from fedsim.learning import models, training

        settings = self.settings()
        head = models.head(trainer.model)
        body = [name for name, _ in trainer.model.named_parameters() if name not in head]
        works: dict[int, LocalWork] = {}

        def head_first(ctx: ClientContext) -> LocalWork:
            works[ctx.pid] = self.local_work(ctx)
            return works[ctx.pid]

        def trained_head(ctx, model, result, work) -> dict:
            return {name: weight.detach().clone() for name, weight in model.state_dict().items()}

        def body_next(ctx: ClientContext) -> LocalWork:
            work = dataclasses.replace(works[ctx.pid], start=heads[ctx.pid])
            trainer.model.load_state_dict(work.start)
            return work  # its generator goes on from where the head epochs left it

        head_settings = dataclasses.replace(settings, epochs=self.head_epochs, steps=None)
        if not body:  # a one-layer model is all head: nothing is shared to train
            with training.only_trained(trainer.model, head):
                return trainer.train(ctxs, self.local_work, self.finish, head_settings)
        with training.only_trained(trainer.model, head):
            first = trainer.train(ctxs, head_first, trained_head, head_settings)
        heads = {
            ctx.pid: done.made for ctx, done in zip(ctxs, first, strict=True) if done.error is None
        }
        ready = [ctx for ctx in ctxs if ctx.pid in heads]
        with training.only_trained(trainer.model, body):
            second = iter(trainer.train(ready, body_next, self.finish, settings))
        return [
            _both(done, next(second)) if ctx.pid in heads else done
            for ctx, done in zip(ctxs, first, strict=True)
        ]


def _both(first: Trained, second: Trained) -> Trained:
    """A client's outcome from its second phase, its seconds from both."""
    return dataclasses.replace(second, seconds=first.seconds + second.seconds)
