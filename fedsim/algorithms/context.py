"""One client's task as its algorithm's client side sees it, and what it gives back.

The client app (fedsim.flower.client_app) makes a ClientContext per client of a bundle;
the algorithm (fedsim.algorithms.base) and the attacks read it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flwr.app import ArrayRecord, RecordDict

from fedsim.ground import messages, streams
from fedsim.ground.config import RunConfig

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass
class ClientContext:
    """One client's task inside an actor: what it was sent, its memory, and access to
    its data and to the process's model."""

    cfg: RunConfig
    pid: int
    server_round: int
    content: RecordDict  # what the strategy sent this client
    state: RecordDict  # its memory from its last round (empty the first time)
    load_model: Callable[[ArrayRecord], nn.Module]  # the process's model with these weights
    load_data: Callable[[str], tuple[torch.Tensor, torch.Tensor]]  # "train"/"val" split

    def generator(self, stream: int = streams.LOCAL_TRAINING) -> torch.Generator:
        """This client's torch generator for `stream` this round (fedsim.ground.streams)."""
        import torch

        seed = streams.client_seed(self.cfg.seed, self.server_round, self.pid, stream)
        return torch.Generator().manual_seed(seed)

    @property
    def config(self):
        return self.content.get(messages.CONFIG, {})


@dataclass
class ClientResult:
    content: RecordDict  # the reply the strategy aggregates
    state: RecordDict | None = None  # the client's new memory (None: keep it)
