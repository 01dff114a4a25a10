"""SCAFFOLD (Karimireddy et al., ICML 2020): control variates correct each client's drift.

As NIID-Bench implements it (Li et al., ICDE 2022), which Flower's baseline follows:
after every optimizer step the client moves its weights by -lr·(c - c_i), c the
server's control variate and c_i its own; then it updates c_i by option II,
c_i+ = c_i - c + (x - y_i) / (K·lr), K its local steps, x the global and y_i its
trained weights, and sends y_i with c_i+ - c_i. The server takes the example-weighted
mean of the y_i (server learning rate 1) and adds the sum of the changes over N, every
client counted, to c. Control variates start at zero and cover every floating-point
entry of the model's state dict.

c_i is the client's memory: it travels in ClientResult.state, which the server keeps
between the client's rounds (in client_states.sqlite), never in the reply the strategy
aggregates.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedsim.algorithms.base import SAMPLE_ALL, Algorithm
from fedsim.algorithms.context import ClientContext, ClientResult, record_of
from fedsim.ground import messages

if TYPE_CHECKING:
    import torch
    from torch import nn

    from fedsim.learning.training import LocalHooks, TrainResult

CONTROL = "control"  # c in the server's message, c_i in the client's state
CONTROL_DELTA = "control-delta"  # c_i+ - c_i in the client's reply


class ScaffoldStrategy(FedAvg):
    """Flower's FedAvg for the model, plus the server's control variate."""

    def __init__(self, clients: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.clients = clients  # N: c moves by the sum of the changes over every client
        self.control: ArrayRecord | None = None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if self.control is None:
            self.control = ArrayRecord(
                {
                    key: Array(np.zeros_like(array))
                    for key, array in zip(arrays.keys(), arrays.to_numpy_ndarrays(), strict=True)
                    if np.issubdtype(array.dtype, np.floating)
                }
            )
        sent = list(super().configure_train(server_round, arrays, config, grid))
        for message in sent:
            message.content[CONTROL] = self.control
        return sent

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = [reply for reply in replies if not reply.has_error()]
        # What is left of each reply is FedAvg's: the model and the metrics
        deltas = [
            list(messages.ndarrays(reply.content.pop(CONTROL_DELTA)).values()) for reply in replies
        ]
        arrays, metrics = super().aggregate_train(server_round, replies)
        if deltas and self.control is not None:
            control = list(messages.ndarrays(self.control).values())
            for index, value in enumerate(control):
                value += sum(delta[index] for delta in deltas) / self.clients
            self.control = ArrayRecord(
                {
                    key: Array(np.asarray(value))
                    for key, value in zip(self.control.keys(), control, strict=True)
                }
            )
        return arrays, metrics


class Scaffold(Algorithm):
    source = "Karimireddy et al., ICML 2020, as NIID-Bench runs it"
    not_with_dp = (
        "its reply carries its control variates' change besides the model, and Flower's "
        "DP wrappers clip every array a reply holds as if it were the model"
    )

    def strategy(self) -> ScaffoldStrategy:
        return ScaffoldStrategy(clients=self.cfg.clients, **SAMPLE_ALL)

    def _controls(
        self, ctx: ClientContext, device: torch.device
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(c, c_i): the server's control variate and the client's, zeros the first time."""
        server = {k: v.to(device) for k, v in ctx.tensors(ctx.content[CONTROL]).items()}
        if CONTROL not in ctx.state:
            return server, {key: value.new_zeros(value.shape) for key, value in server.items()}
        own = ctx.tensors(ctx.state[CONTROL])
        return server, {key: value.to(device) for key, value in own.items()}

    def hooks(self, ctx: ClientContext, model: nn.Module) -> LocalHooks:
        from fedsim.learning.training import LocalHooks

        server, own = self._controls(ctx, next(model.parameters()).device)
        lr = self.cfg.lr
        return LocalHooks(correction={key: lr * (server[key] - own[key]) for key in server})

    def reply(
        self, ctx: ClientContext, model: nn.Module, result: TrainResult, examples: int
    ) -> ClientResult:
        weights = model.state_dict()
        device = next(model.parameters()).device
        server, own = self._controls(ctx, device)
        start = ctx.tensors(ctx.content[messages.ARRAYS])
        scale = max(result.steps, 1) * self.cfg.lr
        updated = {
            key: own[key] - server[key] + (start[key].to(device) - weights[key]) / scale
            for key in server
        }
        delta = {key: updated[key] - own[key] for key in server}
        reply = super().reply(ctx, model, result, examples)
        reply.content[CONTROL_DELTA] = record_of(delta)
        return ClientResult(reply.content, RecordDict({CONTROL: record_of(updated)}))
