"""A model of your own for fedsim: any callable that returns a torch nn.Module taking
a batch of CIFAR-shaped images (N, 3, 32, 32, scaled to [-1, 1]) and giving one score
per class (N, 10).

    python simulate.py --model my_model:small_cnn   # from this folder, or with it on PYTHONPATH
"""

from torch import nn


def small_cnn() -> nn.Module:
    """Two 3×3 convolutions and a linear layer: 18k weights, a quarter of the quickstart CNN's."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 10),
    )


def linear() -> nn.Module:
    """Logistic regression on the pixels: the smallest model that learns anything."""
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
