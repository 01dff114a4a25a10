"""Personal models: the base of an algorithm whose clients each end with a model of
their own, judged on their own held-out examples (FL-bench's pattern: a personal
algorithm is FedAvg plus what a client keeps and how it adapts before it is judged).

A personal algorithm says, each in a short method:
- `own(model)`: which weights are the client's own (none, the head, the body, all);
  they live in the client's memory (fedsim.simulation.client_states: crash-safe,
  resumed exactly, the client's own part only), never in the driver. The rest is
  shared: the client starts from the model it was sent, and the server averages what
  the clients send back as FedAvg does (the global model, judged centrally, is the
  average of everything they trained, their own parts included);
- how a client trains: the generic local SGD from the sent model with its own parts
  put in, unless `train_group` says otherwise (FedRep's two phases, Ditto's copy);
- `adapt`: what a client does to its personalised model before it is judged
  (fine-tune it, or nothing).

Every evaluated client reports, beside the global model's loss and accuracy on its
held-out examples, its personalised model's (messages.PERSONAL_LOSS, PERSONAL_ACCURACY):
clients.csv and rounds.csv carry them (fedsim.outputs.records).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, ClassVar

from flwr.app import RecordDict

from fedsim.algorithms.context import ClientContext, ClientResult, record_of
from fedsim.algorithms.fedavg import FedAvg
from fedsim.ground import messages, streams
from fedsim.ground.errors import ConfigError
from fedsim.ground.option import Bounds, Option, flag

if TYPE_CHECKING:
    from collections.abc import Collection

    import torch
    from torch import nn

    from fedsim.learning.trainers import Finish, Start, Trained, Trainer
    from fedsim.learning.training import LocalHooks, TrainResult, TrainSettings

OWN = "own"  # the client's memory: its own weights


class Personal(FedAvg):
    """FedAvg whose clients keep `own(model)` weights and adapt before being judged."""

    personal: ClassVar[bool] = True
    holdout_clients = Option(
        0.0,
        "share of clients (drawn by the seed) that never train: at each client "
        "evaluation they adapt from the global model as a new client does and are "
        "judged on their own held-out examples (unseen clients)",
        Bounds(0, 1, high_open=True),
    )

    def held_out(self) -> list[int]:
        return streams.held_out(self.cfg.seed, self.cfg.clients, self.holdout_clients)

    def check(self) -> None:
        if self.holdout_clients and not self.cfg.evaluates_on_clients:
            raise ConfigError(
                flag("holdout_clients"),
                "held-out clients are judged at the clients' evaluation, which "
                "--fraction-evaluate 0 or --val-fraction 0 turns off",
            )

    def own(self, model: nn.Module) -> list[str]:
        """The names (state_dict keys) of the weights that are each client's own."""
        return []

    def adapt(self, ctx: ClientContext, model: nn.Module) -> None:
        """Change the personalised model before it is judged (default: nothing)."""

    def adapt_new(self, ctx: ClientContext, model: nn.Module) -> None:
        """What a client without weights of its own yet (one that never trained: an
        unseen client) does to the global model before it is judged: it trains its own
        part of it (`new_client_epochs()`: a head, a body, the whole model), the rest
        fixed; an algorithm whose clients own nothing adapts as any client does."""
        own = self.own(model)
        if not own:
            self.adapt(ctx, model)
            return
        self.fine_tune(ctx, model, self.for_epochs(self.new_client_epochs()), only=own)

    def new_client_epochs(self) -> int:
        """Epochs a client without weights of its own trains them (--local-epochs)."""
        return self.cfg.local_epochs

    # ---- what the generic client does with them -------------------------------------

    def starting_model(self, ctx: ClientContext) -> tuple[nn.Module, dict[str, torch.Tensor]]:
        """A client trains its personalised model."""
        return self.personalised(ctx)

    def personalised(self, ctx: ClientContext) -> tuple[nn.Module, dict[str, torch.Tensor]]:
        """The process's model holding the sent model with the client's own weights put
        in (the sent ones until it has trained once), and those weights."""
        model, sent = super().starting_model(ctx)
        if OWN not in ctx.state:
            return model, sent
        kept = ctx.tensors(ctx.state[OWN])
        model.load_state_dict(kept, strict=False)
        return model, {**sent, **kept}

    def reply(
        self, ctx: ClientContext, model: nn.Module, result: TrainResult, examples: int
    ) -> ClientResult:
        """FedAvg's reply, and the client's own weights as its new memory."""
        made = super().reply(ctx, model, result, examples)
        made.state = self.memory(model)
        return made

    def memory(self, model: nn.Module) -> RecordDict | None:
        """What the client keeps: its own weights (None: nothing to keep)."""
        names = self.own(model)
        if not names:
            return None
        weights = model.state_dict()
        return keep({name: weights[name] for name in names})

    def judge(
        self, ctx: ClientContext, examples: torch.Tensor, labels: torch.Tensor
    ) -> dict[str, float | int]:
        """The global model on the client's held-out examples, and its personalised
        model (its own weights in, then `adapt`) on the same examples."""
        from fedsim.learning import training

        metrics = super().judge(ctx, examples, labels)
        model, _ = self.personalised(ctx)
        (self.adapt if OWN in ctx.state else self.adapt_new)(ctx, model)
        loss, accuracy = training.evaluate(model, ctx.task, examples, labels)
        return metrics | {messages.PERSONAL_LOSS: loss, messages.PERSONAL_ACCURACY: accuracy}

    def fine_tune(
        self,
        ctx: ClientContext,
        model: nn.Module,
        settings: TrainSettings,
        only: Collection[str] | None = None,
        hooks: LocalHooks | None = None,
    ) -> None:
        """Local training as `settings` say (`for_epochs` makes them) on the client's
        training split (of the weights named `only`, if given), its batches drawn from
        the adaptation stream, so judging a client never changes what it trains on."""
        from fedsim.learning import training

        generator = ctx.generator(streams.ADAPTATION)
        names = [name for name, _ in model.named_parameters()] if only is None else only
        with training.only_trained(model, names):
            training.train(
                model,
                ctx.task,
                *self.training_data(ctx),
                settings,
                generator,
                hooks or training.LocalHooks(),
            )

    def fine_tune_near(
        self, ctx: ClientContext, model: nn.Module, settings: TrainSettings, lam: float
    ) -> None:
        """`fine_tune` the whole model pulled toward where it starts by
        λ/2 · ||v - start||² (a new client's own copy: Ditto's, pFedMe's)."""
        anchor = [p.detach().clone() for p in model.parameters()]
        self.fine_tune(ctx, model, settings, hooks=pulled(anchor, lam))

    def for_epochs(self, epochs: int) -> TrainSettings:
        """The run's local training, for `epochs` epochs (whatever --local-steps says)."""
        return dataclasses.replace(self.settings(), epochs=epochs, steps=None)

    def with_own_copy(
        self,
        ctxs: list[ClientContext],
        done: list[Trained],
        trainer: Trainer,
        start: Start,
        kept: Finish,
        settings: TrainSettings,
    ) -> list[Trained]:
        """After the shared model's training (`done`), each client that trained it
        trains a copy of its own (`start`; `kept` makes the client's memory from it:
        Ditto's): the client's reply is the shared model's, its memory the copy's,
        its seconds both; a client whose copy fails, fails."""
        ready = [ctx for ctx, one in zip(ctxs, done, strict=True) if one.error is None]
        copies = iter(trainer.train(ready, start, kept, settings))
        both = []
        for one in done:
            if one.error is None:
                copy = next(copies)
                seconds = one.seconds + copy.seconds
                if copy.error is not None:
                    one = copy
                else:
                    one.made.state = copy.made
                one = dataclasses.replace(one, seconds=seconds)
            both.append(one)
        return both


def keep(weights: dict[str, torch.Tensor]) -> RecordDict:
    """A client's memory holding `weights` as its own."""
    return RecordDict({OWN: record_of(weights)})


def pulled(anchor: list[torch.Tensor], lam: float) -> LocalHooks:
    """λ/2 · ||v - anchor||² added to each batch's loss (nothing when λ is 0)."""
    from fedsim.learning.training import LocalHooks

    return LocalHooks(proximal=(lam, anchor)) if lam else LocalHooks()


class OwnCopy(Personal):
    """Each client keeps a whole model of its own beside the global model, whose local
    training starts, as FedAvg's, from the model sent (Ditto, APFL, pFedMe)."""

    def own(self, model: nn.Module) -> list[str]:
        return list(model.state_dict())

    def starting_model(self, ctx: ClientContext) -> tuple[nn.Module, dict[str, torch.Tensor]]:
        return FedAvg.starting_model(self, ctx)


class OwnHead(Personal):
    """The model's head (fedsim.learning.models.head) is each client's own: a new
    client trains a head of its own on the global body."""

    def own(self, model: nn.Module) -> list[str]:
        from fedsim.learning import models

        return models.head(model)
