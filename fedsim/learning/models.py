"""The models a run can train, by name (--model), and how the initial one is built.

MODELS is the dispatch table --model selects from: names to `module:factory` paths, so
that naming and checking a model imports nothing heavy (the networks themselves are in
fedsim.learning.nets, which imports torch).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from fedsim.ground import streams

if TYPE_CHECKING:
    from torch import nn

MODELS = {
    "cnn": "fedsim.learning.nets:Net",  # Flower's quickstart CNN, NIID-Bench's CIFAR-10 model
    "resnet18": "fedsim.learning.nets:resnet18",  # torchvision's, with the CIFAR stem
}


def build_model(name: str, seed: int | None = None) -> nn.Module:
    """Model `name`; with `seed`, its initial weights are the run's (fedsim.ground.streams)."""
    module, _, factory = MODELS[name].partition(":")
    make = getattr(importlib.import_module(module), factory)
    if seed is not None:
        streams.seed_model_init(seed)
    return make()
