"""The models a run can train, by name (--model), and how the initial one is built.

MODELS is the dispatch table --model selects from: names to `module:factory` paths, so
that naming and checking a model imports nothing heavy (the networks themselves are in
fedsim.learning.nets, which imports torch). A user's model is named by its own path
(`--model my_models:small_cnn`, a callable returning an nn.Module; fedsim.ground.imports)
and registered under it once checked (fedsim.runner.options.admit). Every model is
built for the data's task (fedsim.learning.tasks: its classes and examples), an image
model standardises its inputs by the training split's pixels when asked (--normalize
train-split), and every model is tried on two of the data's examples before a run
starts (`check_model`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING

from fedsim.ground import imports, streams
from fedsim.ground.errors import ConfigError
from fedsim.learning.tasks import CIFAR10, ImageClassification, PixelStats, Task

if TYPE_CHECKING:
    from torch import nn

MODELS = {
    "cnn": "fedsim.learning.nets:Net",  # Flower's quickstart CNN, NIID-Bench's CIFAR-10 model
    "resnet18": "fedsim.learning.nets:resnet18",  # torchvision's, with the CIFAR stem
    "logreg": "fedsim.learning.nets:LogisticRegression",  # a table's: FLamby's Heart baseline
    "mlp": "fedsim.learning.nets:MLP",  # a table's: two hidden layers
    "lstm": "fedsim.learning.nets:CharLSTM",  # text: LEAF's Shakespeare model
    "fedrep-cnn": "fedsim.learning.nets:fedrep_cnn",  # FedRep's CIFAR-10 CNN (CNNCifar)
    "cnn-bn": "fedsim.learning.nets:cnn_bn",  # cnn with BatchNorm (FedBN's models)
}


def build_model(name: str, seed: int | None = None, task: Task = CIFAR10) -> nn.Module:
    """Model `name` for `task` (CIFAR-10's by default); with `seed`, its initial weights
    are the run's (fedsim.ground.streams). A factory gets the task's facts it takes by
    name (`num_classes`, `image_shape`, `num_features`, `vocabulary`: Task.model_facts)."""
    # a name the table holds, or a user's in a process that has not registered it (a client's)
    make = imports.resolve(MODELS[name]) if name in MODELS else imports.load(name, "--model")
    if seed is not None:
        streams.seed_model_init(seed)
    model = make(**_fitting(make, task))
    pixels = task.pixels if isinstance(task, ImageClassification) else None
    if pixels is not None and hasattr(model, "register_forward_pre_hook"):
        model.register_forward_pre_hook(_Standardize(pixels))
    return model


class _Standardize:
    """A model's input hook for --normalize train-split: every loop feeds images scaled
    to [-1, 1] (ImageClassification.inputs); this turns them into (pixel -
    mean) / std per channel of the training split. A hook, not a layer: the model's
    weights, their names and its state_dict stay what the factory made."""

    def __init__(self, pixels: PixelStats) -> None:
        # x = p / 127.5 - 1, so (p - mean) / std = (x - (mean / 127.5 - 1)) / (std / 127.5)
        self.shift = [m / 127.5 - 1.0 for m in pixels.mean]
        self.scale = [s / 127.5 for s in pixels.std]

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        import torch

        images, *rest = args
        view = (1, len(self.shift), 1, 1)
        shift = torch.tensor(self.shift, dtype=images.dtype, device=images.device).view(view)
        scale = torch.tensor(self.scale, dtype=images.dtype, device=images.device).view(view)
        return ((images - shift) / scale, *rest)


def _fitting(make: Callable[..., object], task: Task) -> dict[str, object]:
    """The task's facts that factory `make` takes by name."""
    facts = task.model_facts()
    try:
        parameters = inspect.signature(make).parameters
    except (TypeError, ValueError):  # a builtin or an extension: nothing to give it
        return {}
    return {key: value for key, value in facts.items() if key in parameters}


def check_factory(path: str) -> Callable[..., object]:
    """The factory a user's `--model` names; ConfigError unless it is callable."""
    make = imports.load(path, "--model")
    if not callable(make):
        raise ConfigError("--model", f"{path} is not callable (a function or class making a model)")
    return make


def check_model(name: str, task: Task) -> nn.Module:
    """The model `name` builds for `task`, refused (ConfigError) if it is not an
    nn.Module, cannot take the data's examples, or does not give the task's
    floating-point scores per example: said before anything runs, not as a failure of
    every client."""
    import torch

    try:
        model = build_model(name, task=task)
    except ConfigError:
        raise
    except Exception as error:  # the user's factory raised as it built the model
        raise ConfigError(
            "--model", f"{name} fails to build a model: {type(error).__name__}: {error}"
        ) from None
    if not isinstance(model, torch.nn.Module):
        raise ConfigError("--model", f"{name} made a {type(model).__name__}, not a torch.nn.Module")
    try:
        with torch.no_grad():
            scores = model.eval()(task.inputs(task.example(2)))
    except Exception as error:
        raise ConfigError(
            "--model",
            f"{name} fails on {task.example_text()}: {type(error).__name__}: {error}",
        ) from None
    if not isinstance(scores, torch.Tensor) or not scores.is_floating_point():
        kind = scores.dtype if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ConfigError(
            "--model",
            f"{name} gives {kind} for {task.example_text()}, expected floating-point "
            "scores (a loss cannot be differentiated through integers)",
        )
    found, wanted = tuple(scores.shape), task.scores()
    if found != (2, wanted):
        what = "one score (a logit) per example" if wanted == 1 else "a score per class"
        raise ConfigError(
            "--model",
            f"{name} gives {found} for 2 {task.plural}, expected (2, {wanted}): {what} of the data",
        )
    return model


def head(model: nn.Module) -> list[str]:
    """The names (state_dict keys) of the model's head: its last module with weights of
    its own (the classifier: Net's fc3, a table MLP's last Linear, the LSTM's output
    layer). Personal algorithms split a model there (fedsim.algorithms.personal)."""
    weighted = [name for name, module in model.named_modules() if list(module.parameters(False))]
    last = weighted[-1]
    prefix = f"{last}." if last else ""
    return [
        key
        for key in model.state_dict()
        if key.startswith(prefix) and "." not in key[len(prefix) :]
    ]
