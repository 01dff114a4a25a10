"""What a decoded image dataset is: its arrays, its shape (what a model is built for),
its pixel statistics, and the one error every reader raises (on --data)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.ground.errors import ConfigError

IMAGE_SHAPE = (3, 32, 32)  # CIFAR-10's (channels, height, width)
NUM_CLASSES = 10  # CIFAR-10's


# An ImageFolder's images: torchvision's ImageFolder's suffixes, and GIF, which decodes.
# One fedsim cannot decode (BMP, TIFF, PPM, PGM) is refused by name, never left out.
class DataError(ConfigError):
    """The data source is missing, unreachable or not CIFAR-shaped (reported on --data)."""

    def __init__(self, message: str) -> None:
        super().__init__("--data", message)


NORMALIZATIONS = (RANGE, TRAIN_SPLIT) = ("range", "train-split")  # --normalize's choices


@dataclass(frozen=True)
class PixelStats:
    """Each channel's pixel mean and standard deviation over the training split, in
    the images' own 0-255 units (--normalize train-split)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True)
class Shape:
    """What a model is built for: the data's image (channels, height, width), the
    number of classes (a model's outputs, the labels' range) and, when the inputs are
    standardised, the training split's pixel statistics. CIFAR-10's by default."""

    image: tuple[int, int, int] = IMAGE_SHAPE
    classes: int = NUM_CLASSES
    pixels: PixelStats | None = None  # None: pixels scaled to [-1, 1], nothing measured

    def describe(self) -> dict[str, object]:
        facts: dict[str, object] = {"image_shape": list(self.image), "classes": self.classes}
        if self.pixels is not None:
            facts |= {"pixel_mean": list(self.pixels.mean), "pixel_std": list(self.pixels.std)}
        return facts

    @classmethod
    def described(cls, facts: dict[str, Any] | None) -> Shape:
        """The shape `describe` wrote (config.json's data_shape); CIFAR-10's for none."""
        if not facts:
            return CIFAR10
        pixels = None
        if "pixel_mean" in facts:
            pixels = PixelStats(tuple(facts["pixel_mean"]), tuple(facts["pixel_std"]))
        return cls(tuple(facts["image_shape"]), facts["classes"], pixels)  # type: ignore[arg-type]


CIFAR10 = Shape()


def pixel_stats(images: np.ndarray, chunk: int = 4096) -> PixelStats:
    """Per-channel mean and standard deviation of NCHW uint8 `images`, from exact
    integer sums read a chunk at a time: the same figures on every machine, and no
    float copy of the whole split (CIFAR-10's would be 1.2 GB)."""
    channels = images.shape[1]
    total, squares = np.zeros(channels, np.int64), np.zeros(channels, np.int64)
    for start in range(0, len(images), chunk):
        block = np.asarray(images[start : start + chunk], dtype=np.int64)
        total += block.sum(axis=(0, 2, 3))
        squares += np.square(block).sum(axis=(0, 2, 3))
    count = max(images.size // channels, 1)
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    return PixelStats(tuple(map(float, mean)), tuple(float(s) if s > 0 else 1.0 for s in std))


@dataclass(frozen=True)
class DecodedDataset:
    """Train and test images as NCHW uint8 arrays (memory-mapped from the cache)."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: tuple[str, ...]
    key: str
    source: str
    folder: Path  # the decoded cache it is mapped from
    pixels: PixelStats | None = None  # measured on the training split (`normalized`)

    @property
    def shape(self) -> Shape:
        image = tuple(self.train_x.shape[1:])
        return Shape(image, len(self.classes), self.pixels)  # type: ignore[arg-type]

    def normalized(self, how: str) -> DecodedDataset:
        """The dataset whose models standardise their inputs as --normalize says:
        `range` measures nothing; `train-split` measures the training split's pixels."""
        if how == RANGE:
            return self
        return dataclasses.replace(self, pixels=pixel_stats(self.train_x))
