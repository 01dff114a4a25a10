"""Who trains a group of clients' local SGD: one after another, or together (vectorised,
fedsim.learning.together). A client process chooses its trainer once
(fedsim.flower.client_app); an algorithm's client side is written once, over either
(fedsim.algorithms.base.Algorithm.train_group).

A trainer is given the group's items (an algorithm's client contexts), `start` (puts
the item's starting weights into the process's model and says its local work) and
`finish` (builds the item's reply from the trained model), and gives back, per item,
what `finish` made or the error it raised, with its seconds. One client's error fails
that client alone: a group that fails together is trained again one client at a time.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import torch
from torch import nn

from fedsim.learning import together
from fedsim.learning.tasks import Task
from fedsim.learning.training import LocalHooks, TrainResult, TrainSettings, train

Item = TypeVar("Item")
Made = TypeVar("Made")


@dataclass(frozen=True)
class LocalWork:
    """One client's local training, as its algorithm sets it up."""

    start: dict[str, torch.Tensor]  # the weights it starts from
    examples: torch.Tensor
    labels: torch.Tensor
    generator: torch.Generator  # its batches' order and augmentation
    hooks: LocalHooks


@dataclass(frozen=True)
class Trained(Generic[Made]):
    """One item's outcome: what `finish` made, or the error that failed it."""

    made: Made | None
    error: Exception | None
    seconds: float


Start = Callable[[Item], LocalWork]
Finish = Callable[[Item, nn.Module, TrainResult, LocalWork], Made]


class Trainer(Protocol):
    model: nn.Module  # the process's model, which `start` loads

    def train(
        self,
        items: Sequence[Item],
        start: Start,
        finish: Finish,
        settings: TrainSettings,
    ) -> list[Trained[Made]]: ...


class OneAtATime:
    """Each client's local training in turn, in the process's model (training.train)."""

    def __init__(self, model: nn.Module, task: Task) -> None:
        self.model, self.task = model, task

    def train(self, items, start, finish, settings) -> list[Trained]:
        done = []
        for item in items:
            tick = time.perf_counter()
            try:
                work = start(item)  # the model holds the client's starting weights now
                result = train(
                    self.model,
                    self.task,
                    work.examples,
                    work.labels,
                    settings,
                    work.generator,
                    work.hooks,
                )
                done.append(Trained(finish(item, self.model, result, work), None, _since(tick)))
            except Exception as error:  # the client fails alone; the group goes on
                done.append(Trained(None, error, _since(tick)))
        return done


class Together:
    """The group's clients at once (together.train_together), each timed at an equal
    share of the group's time; one at a time where they cannot be (a client's hooks
    are callables) or where the group fails, so that a client fails alone."""

    def __init__(self, model: nn.Module, task: Task) -> None:
        self.model, self.task = model, task
        self.alone = OneAtATime(model, task)

    def train(self, items, start, finish, settings) -> list[Trained]:
        tick = time.perf_counter()
        try:
            works = [start(item) for item in items]
            if works and all(work.hooks.declarative for work in works):
                weights, results = together.train_together(
                    self.model,
                    self.task,
                    [work.start for work in works],
                    [(work.examples, work.labels) for work in works],
                    settings,
                    [work.generator for work in works],
                    [work.hooks for work in works],
                )
                made = []
                for item, work, trained, result in zip(items, works, weights, results, strict=True):
                    self.model.load_state_dict(trained)
                    made.append(finish(item, self.model, result, work))
                share = _since(tick) / len(items)
                return [Trained(one, None, share) for one in made]
        except Exception as error:  # the group failed as a whole: each alone, failing alone
            done = self.alone.train(items, start, finish, settings)
            if all(one.error is None for one in done):  # not a client's own failure: say why
                _say_once(
                    f"clients could not train together ({type(error).__name__}: {error}); "
                    "they train one at a time"
                )
            return done
        return self.alone.train(items, start, finish, settings)


@functools.cache
def _say_once(message: str) -> None:
    """A fallback is said once per process and reason, not once per group."""
    print(f"fedsim: {message}", file=sys.stderr, flush=True)


def _since(tick: float) -> float:
    return time.perf_counter() - tick
