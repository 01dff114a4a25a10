"""q-FedAvg (Li et al., ICLR 2020, "Fair Resource Allocation in Federated Learning"):
clients whose loss is higher weigh more, by loss^q, for a fairer spread of accuracy
(q = 0 is FedAvg-like, larger q fairer). Flower's QFedAvg, with the client learning
rate as its Lipschitz estimate (L = 1/lr).

Which loss: q-FFL weighs client k by F_k(w^t), the loss of the model it *received*, on
its training data. Flower's QFedAvg reads whatever loss the client reports, so each
client evaluates the received model on its training split before training and reports
that as `received_loss`, the key QFedAvg is told to read; `train_loss` stays the mean
loss over the local steps, comparable with every other algorithm's.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord
from flwr.serverapp import strategy as strategies

from fedsim.algorithms.base import SAMPLE_ALL, Algorithm
from fedsim.algorithms.context import ClientContext
from fedsim.ground import messages
from fedsim.ground.option import Option, at_least

if TYPE_CHECKING:
    from fedsim.learning.trainers import Trained, Trainer

RECEIVED_LOSS = "received_loss"


class QFedAvgStrategy(strategies.QFedAvg):
    """Flower's QFedAvg, whose update comes back as float64 (np.float_power promotes it):
    cast back to the model's dtypes, or every later round would send twice the bytes."""

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        dtypes = [array.numpy().dtype for array in (self.current_arrays or {}).values()]
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is None:
            return None, metrics
        cast = {
            key: Array(np.asarray(value.numpy().astype(dtype)))
            for (key, value), dtype in zip(arrays.items(), dtypes, strict=True)
        }
        return ArrayRecord(cast), metrics


class QFedAvg(Algorithm):
    source = "Li et al., ICLR 2020"
    q = Option(0.1, "q-FFL fairness exponent (0 weighs every client's loss alike)", at_least(0))

    def strategy(self) -> QFedAvgStrategy:
        return QFedAvgStrategy(
            client_learning_rate=self.cfg.lr,
            q=self.q,
            train_loss_key=RECEIVED_LOSS,
            **SAMPLE_ALL,
        )

    def train_group(self, ctxs: list[ClientContext], trainer: Trainer) -> list[Trained]:
        """Each client's loss on the model it was sent (q-FFL's F_k) goes with its reply."""
        received = [self._received_loss(ctx) for ctx in ctxs]
        done = super().train_group(ctxs, trainer)
        for trained, received_loss in zip(done, received, strict=True):
            if trained.made is not None:
                trained.made.content[messages.METRICS][RECEIVED_LOSS] = received_loss
        return done

    def _received_loss(self, ctx: ClientContext) -> float:
        """The received model's loss on the client's training split (q-FFL's F_k)."""
        from fedsim.learning import training

        model = ctx.load_model(ctx.content[messages.ARRAYS])
        return training.evaluate(model, ctx.task, *self.training_data(ctx))[0]
