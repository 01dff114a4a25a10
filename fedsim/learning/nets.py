"""The networks fedsim ships (fedsim.learning.models names them)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fedsim.learning.tasks import IMAGE_SHAPE, NUM_CLASSES


class Net(nn.Module):
    """The CNN of Flower's PyTorch quickstart (and NIID-Bench's CIFAR-10 model), for
    the data's channels, image size and classes (CIFAR-10's: the quickstart's exactly):
    two 5x5 convolutions, each with 2x2 max-pooling, then two hidden layers and one
    score per class; the head (a personal algorithm's own part) is fc3. With
    `batch_norm`, BatchNorm follows every layer but the last, as in FedBN's models
    (Li et al., ICLR 2021); without, the four norms are identities (no weights)."""

    def __init__(
        self,
        num_classes: int = NUM_CLASSES,
        image_shape: tuple[int, int, int] = IMAGE_SHAPE,
        convolutions: tuple[int, int] = (6, 16),
        hidden: tuple[int, int] = (120, 84),
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        channels, height, width = image_shape
        self.conv1 = nn.Conv2d(channels, convolutions[0], 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(convolutions[0], convolutions[1], 5)
        flat = convolutions[1] * _after_convs(height) * _after_convs(width)
        self.fc1 = nn.Linear(flat, hidden[0])
        self.fc2 = nn.Linear(hidden[0], hidden[1])
        norm2d = nn.BatchNorm2d if batch_norm else lambda width: nn.Identity()
        norm1d = nn.BatchNorm1d if batch_norm else lambda width: nn.Identity()
        self.norm1, self.norm2 = norm2d(convolutions[0]), norm2d(convolutions[1])
        self.norm3, self.norm4 = norm1d(hidden[0]), norm1d(hidden[1])
        self.fc3 = nn.Linear(hidden[1], num_classes)  # last: the head (models.head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.norm1(self.conv1(x))))
        x = self.pool(F.relu(self.norm2(self.conv2(x))))
        x = x.flatten(1)
        x = F.relu(self.norm3(self.fc1(x)))
        x = F.relu(self.norm4(self.fc2(x)))
        return self.fc3(x)


def fedrep_cnn(
    num_classes: int = NUM_CLASSES, image_shape: tuple[int, int, int] = IMAGE_SHAPE
) -> nn.Module:
    """FedRep's CIFAR-10 CNN (lgcollins/FedRep, models/Nets.py `CNNCifar`): Net with 64
    channels in both convolutions and hidden layers of 120 and 64. The log-softmax
    FedRep ends with is in the task's cross-entropy."""
    return Net(num_classes, image_shape, convolutions=(64, 64), hidden=(120, 64))


def cnn_bn(
    num_classes: int = NUM_CLASSES, image_shape: tuple[int, int, int] = IMAGE_SHAPE
) -> nn.Module:
    """Net with BatchNorm after each layer but the last (FedBN's personal part)."""
    return Net(num_classes, image_shape, batch_norm=True)


def _after_convs(size: int) -> int:
    """A side of Net's feature map: two 5x5 convolutions, each followed by 2x2 pooling."""
    return ((size - 4) // 2 - 4) // 2


def resnet18(
    num_classes: int = NUM_CLASSES, image_shape: tuple[int, int, int] = IMAGE_SHAPE
) -> nn.Module:
    """torchvision's ResNet-18 with the usual CIFAR stem (3x3 conv, no max-pool)."""
    from torchvision.models import resnet18 as torchvision_resnet18

    model = torchvision_resnet18(num_classes=num_classes)
    model.conv1 = nn.Conv2d(image_shape[0], 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


class LogisticRegression(nn.Module):
    """One linear layer: a logit per example for two classes (FLamby's Fed-Heart-Disease
    baseline, whose sigmoid is in the task's loss), a score per class for more."""

    def __init__(self, num_features: int, num_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(num_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


class MLP(nn.Module):
    """A table's small network: two hidden layers of 64 with ReLU."""

    def __init__(self, num_features: int, num_classes: int, hidden: int = 64) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(num_features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class CharLSTM(nn.Module):
    """LEAF's Shakespeare model (and the FedAvg paper's): an 8-dimensional embedding of
    each character, two LSTM layers of 256, and a linear layer over the vocabulary,
    read at the string's last character."""

    def __init__(self, vocabulary: int, embedding: int = 8, hidden: int = 256) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocabulary, embedding)
        self.lstm = nn.LSTM(embedding, hidden, num_layers=2, batch_first=True)
        self.head = nn.Linear(hidden, vocabulary)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        output, _ = self.lstm(self.embedding(x))
        return self.head(output[:, -1])
