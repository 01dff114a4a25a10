"""One client's task as its algorithm's client side sees it, and what it gives back.

The client app (fedsim.flower.client_app) makes a ClientContext per client of a bundle;
the algorithm (fedsim.algorithms.base) and the attacks read it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flwr.app import ArrayRecord, RecordDict

from fedsim.ground import messages, streams
from fedsim.ground.config import RunConfig
from fedsim.learning.tasks import CIFAR10, Task

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
    # A record's tensors, read-only: the client process converts a record once and
    # serves every client of its bundle the same tensors (the server's control variate)
    tensors: Callable[[ArrayRecord], dict[str, torch.Tensor]] = lambda record: tensors_of(record)
    task: Task = CIFAR10  # what the data's examples are, the loss and the metrics

    def generator(self, stream: int = streams.LOCAL_TRAINING) -> torch.Generator:
        """This client's torch generator for `stream` this round (fedsim.ground.streams)."""
        import torch

        seed = streams.client_seed(self.cfg.seed, self.server_round, self.pid, stream)
        return torch.Generator().manual_seed(seed)

    @property
    def config(self):
        return self.content.get(messages.CONFIG, {})


def tensors_of(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """`record.to_torch_state_dict()`, the same tensors, converted faster (messages)."""
    import torch

    return {key: torch.from_numpy(array) for key, array in messages.ndarrays(record).items()}


def record_of(tensors: Mapping[str, torch.Tensor]) -> ArrayRecord:
    """`ArrayRecord(tensors)`, the same bytes, built faster (messages)."""
    return messages.array_record({k: v.detach().cpu().numpy() for k, v in tensors.items()})


@dataclass
class ClientResult:
    content: RecordDict  # the reply the strategy aggregates
    state: RecordDict | None = None  # the client's new memory (None: keep it)
