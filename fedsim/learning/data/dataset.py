"""What a decoded dataset is: its arrays, its task (what a model is built for, read from
the arrays), an image split's pixel statistics, and the one error every reader raises
(on --data)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedsim.ground.errors import ConfigError
from fedsim.learning.tasks import (
    ImageClassification,
    NextCharacter,
    PixelStats,
    TableClassification,
    Task,
)


class DataError(ConfigError):
    """The data source is missing, unreachable or not readable (reported on --data)."""

    def __init__(self, message: str) -> None:
        super().__init__("--data", message)


NORMALIZATIONS = (RANGE, TRAIN_SPLIT) = ("range", "train-split")  # --normalize's choices


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
    """Train and test examples and labels (memory-mapped from the cache): NCHW uint8
    images, float32 table rows or uint8 strings. A source whose examples belong to
    named groups (a table's centres, a play's speakers) gives each example's group;
    --partition natural makes each group a client, and the central evaluation reports
    each group."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: tuple[str, ...]
    key: str
    source: str
    folder: Path  # the decoded cache it is mapped from
    pixels: PixelStats | None = None  # measured on the training split (`normalized`)
    train_groups: np.ndarray | None = None  # each example's group (an index into `groups`)
    test_groups: np.ndarray | None = None
    groups: tuple[str, ...] = ()
    notes: dict = dataclasses.field(default_factory=dict)  # what the reader left out, by what rule

    @property
    def task(self) -> Task:
        """What the arrays are: 4-d images, float rows, or strings of characters."""
        if self.train_x.ndim == 4:
            image = tuple(self.train_x.shape[1:])
            return ImageClassification(image, len(self.classes), self.pixels)  # type: ignore[arg-type]
        if self.train_x.dtype.kind == "f":
            return TableClassification(self.train_x.shape[1], len(self.classes))
        return NextCharacter(self.train_x.shape[1], len(self.classes))

    def normalized(self, how: str) -> DecodedDataset:
        """The dataset whose models standardise their inputs as --normalize says:
        `range` measures nothing; `train-split` measures the training split's pixels."""
        if how == RANGE:
            return self
        if not isinstance(self.task, ImageClassification):
            raise ConfigError(
                "--normalize",
                f"{how} standardises pixels; the data is {self.task.kind} (use range)",
            )
        return dataclasses.replace(self, pixels=pixel_stats(self.train_x))
