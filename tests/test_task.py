"""fedsim.learning.training: the hand-written SGD must train exactly as torch.optim.SGD does."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fedsim.learning import models, training
from fedsim.learning.tasks import CIFAR10


def _torch_sgd_train(model, images, labels, settings, generator) -> None:
    """training.train's loop as it was with torch.optim.SGD (no FedProx, no augmentation)."""
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=settings.lr,
        momentum=settings.momentum,
        weight_decay=settings.weight_decay,
    )
    model.train()
    order = torch.randperm(len(labels), generator=generator)
    for start in range(0, len(labels), settings.batch_size):
        index = order[start : start + settings.batch_size]
        loss = F.cross_entropy(model(CIFAR10.inputs(images[index])), labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


@pytest.mark.parametrize(("momentum", "weight_decay"), [(0.9, 0.0), (0.0, 0.0), (0.9, 5e-4)])
def test_sgd_matches_torch_optim(momentum: float, weight_decay: float) -> None:
    data = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (96, 3, 32, 32), dtype=torch.uint8, generator=data)
    labels = torch.randint(0, 10, (96,), generator=data)
    settings = training.TrainSettings(
        epochs=1, batch_size=16, lr=0.05, momentum=momentum, weight_decay=weight_decay
    )
    ours, theirs = models.build_model("cnn", seed=0), models.build_model("cnn", seed=0)
    training.train(ours, CIFAR10, images, labels, settings, torch.Generator().manual_seed(2))
    _torch_sgd_train(theirs, images, labels, settings, torch.Generator().manual_seed(2))
    for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
