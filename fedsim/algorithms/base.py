"""The base of every algorithm: how an algorithm describes itself, and the generic
client (local SGD on the client's partition) it changes only where it must
(pfl-research's pattern: an algorithm is a short class over a generic loop).

An algorithm's file declares, on its class:
- its options, as `Option` class attributes (help, default, bounds); `self.name_of_it`
  reads the run's value, and the command line, experiment files, the Flower App's
  run config, config.json and the summary all take them from there;
- its checks (`check`): settings it cannot run with, refused before anything starts;
- its flags: `asynchronous` (it has no rounds of sampled clients: `buffered()` says
  how its updates arrive), `not_with_dp` (why --dp cannot wrap it), `source`,
  `trains_together` (whether a bundle's clients may train at once, --vectorize);
- its server side (`strategy()`: a Flower Strategy, Flower's own class wherever one
  exists) and what its clients do (`hooks`, `training_data`, `update`, `reply`, or
  `train_group` and `evaluate` whole), with memory kept between a client's rounds in
  `ClientResult.state`.

The command line reads every algorithm's class to list its options, so an algorithm
module imports torch and fedsim.learning inside its client-side methods, not at the
top: naming and validating options stays fast.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Strategy

from fedsim.algorithms.context import ClientContext, ClientResult, record_of
from fedsim.ground import insides, messages
from fedsim.ground.config import RunConfig
from fedsim.ground.option import Option, at_least, greater_than

if TYPE_CHECKING:
    import torch
    from torch import nn

    from fedsim.learning.trainers import LocalWork, Trained, Trainer
    from fedsim.learning.training import LocalHooks, TrainResult, TrainSettings

# fedsim samples clients itself (seeded, by partition id) and shows each strategy a
# view of exactly the sampled clients, so the strategies' own fractions are 1.0 and
# their minimums 1: Flower's default minimum of 2 would wait forever for a second client.
SAMPLE_ALL = {
    "fraction_train": 1.0,
    "fraction_evaluate": 1.0,
    "min_train_nodes": 1,
    "min_evaluate_nodes": 1,
    "min_available_nodes": 1,
}


def given(**options: Any) -> dict[str, Any]:
    """Only the options the user set, so Flower's defaults stay Flower's."""
    return {key: value for key, value in options.items() if value is not None}


class FromTheSentModel(FedAvg):
    """Flower's FedAvg sampling and reply checks, for a server update that needs the
    model the round sent (FedNova, FedDyn): it keeps that model (`current_arrays`, as
    Flower's QFedAvg does) and hands `update` the valid replies' contents; the train
    metrics are FedAvg's (example-weighted)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.current_arrays: ArrayRecord | None = None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.current_arrays = arrays
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid = insides.valid_replies(self, list(replies), is_train=True)
        if not valid or self.current_arrays is None:
            return None, None
        contents = [reply.content for reply in valid]
        arrays = self.update(self.current_arrays, contents)
        return arrays, self.train_metrics_aggr_fn(contents, self.weighted_by_key)

    def update(self, sent: ArrayRecord, contents: list[RecordDict]) -> ArrayRecord:
        """The new global model from the model sent and the clients' replies."""
        raise NotImplementedError


@dataclass(frozen=True)
class Buffered:
    """How an asynchronous algorithm's updates arrive (fedsim.simulation.buffered): the
    server updates the model once `size` have, with `concurrency` clients training at
    once on the simulated clock."""

    size: int
    concurrency: int


class Algorithm:
    """Server side: `strategy()`, a Flower Strategy. Client side: `train_group()` and
    `evaluate()`; the default is plain local SGD with the algorithm's `hooks()`, and a
    reply of the new weights (`update`)."""

    source: ClassVar[str] = ""  # where it comes from: "Li et al., MLSys 2020"
    asynchronous: ClassVar[bool] = False  # no rounds of sampled clients: see buffered()
    not_with_dp: ClassVar[str | None] = None  # why --dp cannot wrap it, if it cannot
    # Whether its clients' local SGD is the generic one with hooks said as data
    # (training.LocalHooks), so a bundle's clients can train at once (--vectorize): an
    # algorithm that overrides `train` does not, nor one that sets this False
    trains_together: ClassVar[bool] = True
    # Whether its clients end with models of their own (fedsim.algorithms.personal):
    # evaluation then gets each client's memory and reports its personalised model too
    personal: ClassVar[bool] = False

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg

    @classmethod
    def options(cls) -> list[Option]:
        """The options it declares (its class's and its bases'), in declaration order."""
        found: dict[str, Option] = {}
        for klass in reversed(cls.__mro__):
            found.update((k, v) for k, v in vars(klass).items() if isinstance(v, Option))
        return list(found.values())

    def check(self) -> None:
        """Refuse (ConfigError) settings it cannot run with; called before anything runs."""

    def check_model(self, model: nn.Module) -> None:
        """Refuse (ConfigError) a model it cannot train (FedBN: one without BatchNorm);
        called once the run's model is built, before anything runs."""

    def held_out(self) -> list[int]:
        """The clients that never train, judged as unseen clients (a personal
        algorithm's --holdout-clients); none by default."""
        return []

    def buffered(self) -> Buffered | None:
        """How its updates arrive, for an asynchronous algorithm (None: rounds)."""
        return None

    # ---- server side -------------------------------------------------------------------

    def strategy(self) -> Strategy:
        raise NotImplementedError

    # ---- client side -------------------------------------------------------------------

    def settings(self) -> TrainSettings:
        from fedsim.learning.training import train_settings

        return train_settings(self.cfg)

    def hooks(self, ctx: ClientContext, model: nn.Module) -> LocalHooks:
        from fedsim.learning.training import LocalHooks

        return LocalHooks()

    def training_data(self, ctx: ClientContext) -> tuple[torch.Tensor, torch.Tensor]:
        """The client's training split; a label-flipping attacker's labels are flipped."""
        from fedsim.algorithms import attacks

        examples, labels = ctx.load_data("train")
        if attacks.attack_of(ctx.cfg, ctx.pid) == "label-flip":
            labels = attacks.flip_labels(labels, ctx.task.classes)
        return examples, labels

    def train_group(self, ctxs: list[ClientContext], trainer: Trainer) -> list[Trained]:
        """The generic client, for a group of clients (a bundle's): each one's local
        work (`local_work`), local SGD by the process's trainer (one at a time, or
        together: fedsim.learning.trainers), then its reply (`finish`). An algorithm
        changes the parts (`starting_model`, `hooks`, `training_data`, `update`,
        `reply`), or this method to train more than once (FedRep, Ditto) or add to the
        group's replies (qFedAvg); a client that fails, fails alone."""
        return trainer.train(ctxs, self.local_work, self.finish, self.settings())

    def local_work(self, ctx: ClientContext) -> LocalWork:
        """The client's local training: the process's model holds its starting weights
        once this returns, with its training data and hooks."""
        from fedsim.learning.trainers import LocalWork

        model, starting = self.starting_model(ctx)
        examples, labels = self.training_data(ctx)
        return LocalWork(starting, examples, labels, ctx.generator(), self.hooks(ctx, model))

    def starting_model(self, ctx: ClientContext) -> tuple[nn.Module, dict[str, torch.Tensor]]:
        """The process's model holding the weights the client starts from, and those
        weights: the model it was sent."""
        arrays = ctx.content[messages.ARRAYS]
        return ctx.load_model(arrays), ctx.tensors(arrays)

    def finish(
        self, ctx: ClientContext, model: nn.Module, result: TrainResult, work: LocalWork
    ) -> ClientResult:
        """The client's reply from its trained model; a malicious client's weights are
        poisoned first."""
        from fedsim.algorithms import attacks

        attacks.poison(ctx, model)
        return self.reply(ctx, model, result, len(work.labels))

    @classmethod
    def why_not_together(cls) -> str | None:
        """Why its clients train one at a time whatever --vectorize says (None: they
        can train together, where their hooks are said as data)."""
        if not cls.trains_together:
            return f"{cls.__name__}'s local training is not said as data"
        return None

    def reply(
        self, ctx: ClientContext, model: nn.Module, result: TrainResult, examples: int
    ) -> ClientResult:
        metrics = {messages.TRAIN_LOSS: result.loss, messages.NUM_EXAMPLES: examples}
        return ClientResult(messages.train_reply(self.update(ctx, model), metrics))

    def update(self, ctx: ClientContext, model: nn.Module) -> ArrayRecord:
        """What the client sends back: its trained weights."""
        return record_of(model.state_dict())

    def evaluate(self, ctx: ClientContext) -> ClientResult:
        """The client's metrics (`judge`) on its held-out examples, gathered once."""
        metrics = self.judge(ctx, *ctx.load_data("val"))
        return ClientResult(RecordDict({messages.METRICS: MetricRecord(metrics)}))

    def judge(
        self, ctx: ClientContext, examples: torch.Tensor, labels: torch.Tensor
    ) -> dict[str, float | int]:
        """The model it was sent on the client's held-out examples."""
        from fedsim.learning import training

        model = ctx.load_model(ctx.content[messages.ARRAYS])
        loss, accuracy = training.evaluate(model, ctx.task, examples, labels)
        return {
            messages.EVAL_LOSS: loss,
            messages.EVAL_ACCURACY: accuracy,
            messages.NUM_EXAMPLES: len(labels),
        }


# ---- options more than one algorithm declares (each declares it, from here) -------------

SERVER_LR = Option(
    None,
    "server learning rate (auto: Flower's for the algorithm; FedBuff's 1)",
    bounds=greater_than(0),
    type=float,
)
NUM_MALICIOUS = Option(
    0, "malicious clients the aggregation must withstand (f)", bounds=at_least(0)
)
