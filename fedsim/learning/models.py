"""The models a run can train, by name (--model), and how the initial one is built.

MODELS is the dispatch table --model selects from: names to `module:factory` paths, so
that naming and checking a model imports nothing heavy (the networks themselves are in
fedsim.learning.nets, which imports torch). A user's model is named by its own path
(`--model my_models:small_cnn`, a callable returning an nn.Module; fedsim.ground.imports)
and registered under it once checked (fedsim.runner.options.admit).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from fedsim.ground import imports, streams
from fedsim.ground.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

MODELS = {
    "cnn": "fedsim.learning.nets:Net",  # Flower's quickstart CNN, NIID-Bench's CIFAR-10 model
    "resnet18": "fedsim.learning.nets:resnet18",  # torchvision's, with the CIFAR stem
}


def build_model(name: str, seed: int | None = None) -> nn.Module:
    """Model `name`; with `seed`, its initial weights are the run's (fedsim.ground.streams)."""
    if name in MODELS:
        module, _, factory = MODELS[name].partition(":")
        make = getattr(importlib.import_module(module), factory)
    else:  # a user's, in a process that has not registered it (a client's)
        make = imports.load(name, "--model")
    if seed is not None:
        streams.seed_model_init(seed)
    return make()


def check_model(name: str) -> None:
    """Refuse (ConfigError) a user's model that is not a callable making an nn.Module,
    cannot take the data's images, or does not give one score per class: said before
    anything runs, not as a failure of every client."""
    import torch

    from fedsim.learning.data import IMAGE_SHAPE, NUM_CLASSES

    if not callable(make := imports.load(name, "--model")):
        raise ConfigError("--model", f"{name} is not callable (a function or class making a model)")
    model = make()
    if not isinstance(model, torch.nn.Module):
        raise ConfigError("--model", f"{name} made a {type(model).__name__}, not a torch.nn.Module")
    try:
        with torch.no_grad():
            scores = model.eval()(torch.zeros(2, *IMAGE_SHAPE))
    except Exception as error:
        raise ConfigError(
            "--model",
            f"{name} fails on images of shape {IMAGE_SHAPE}: {type(error).__name__}: {error}",
        ) from None
    shape = tuple(getattr(scores, "shape", ()))
    if shape != (2, NUM_CLASSES):
        raise ConfigError(
            "--model",
            f"{name} gives {shape} for 2 images, expected (2, {NUM_CLASSES}): a score per class",
        )
