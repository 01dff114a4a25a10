"""A model of your own for fedsim: any callable that returns a torch nn.Module taking a
batch of the data's images (CIFAR-10: (N, 3, 32, 32), scaled to [-1, 1]) and giving one
score per class. A factory that takes `num_classes` and `image_shape` (channels,
height, width) gets the data's, so the same one fits CIFAR-10 and grey 28×28 digits.

    python simulate.py --model my_model:small_cnn   # from this folder, or with it on PYTHONPATH
"""

import math

from torch import nn


def small_cnn(num_classes: int = 10, image_shape: tuple[int, int, int] = (3, 32, 32)) -> nn.Module:
    """Two 3×3 convolutions and a linear layer: 18k weights on CIFAR-10, a quarter of the
    quickstart CNN's."""
    return nn.Sequential(
        nn.Conv2d(image_shape[0], 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, num_classes),
    )


def linear(num_classes: int = 10, image_shape: tuple[int, int, int] = (3, 32, 32)) -> nn.Module:
    """Logistic regression on the pixels: the smallest model that learns anything."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(image_shape), num_classes))
