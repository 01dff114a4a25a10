"""torchvision's cifar-10-batches-py layout: five training batches and a test batch,
pickled dictionaries of images and labels."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.learning.data.dataset import DataError
from fedsim.learning.data.images import check_labels
from fedsim.learning.tasks import IMAGE_SHAPE


def _unpickle(file: Path) -> Any:
    try:
        with open(file, "rb") as handle:
            return pickle.load(handle, encoding="latin1")
    except Exception as error:
        raise DataError(f"{file}: not a readable CIFAR-10 batch ({error})") from error


def _read_batch(file: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch's images and labels, checked here, where the message can name the file:
    once concatenated, a short batch would shift every later image off its label."""
    batch = _unpickle(file)
    if not isinstance(batch, dict) or not {"data", "labels"} <= batch.keys():
        raise DataError(f"{file}: not a CIFAR-10 batch (no 'data' and 'labels')")
    data, labels = np.asarray(batch["data"]), np.asarray(batch["labels"])
    pixels = int(np.prod(IMAGE_SHAPE))
    if data.dtype != np.uint8 or data.size % pixels:
        raise DataError(
            f"{file}: data is {data.dtype} of shape {data.shape}, "
            f"expected uint8 images of {pixels} values each"
        )
    if labels.ndim != 1 or len(labels) != data.size // pixels:
        raise DataError(f"{file}: {labels.size} labels for {data.size // pixels} images")
    if labels.size and labels.dtype.kind not in "iu":
        raise DataError(f"{file}: labels are {labels.dtype}, expected integer class indices")
    check_labels(labels, str(file))
    return data.reshape(-1, *IMAGE_SHAPE), labels.astype(np.int64)


def read_batches(folder: Path) -> tuple[dict[str, np.ndarray], list[str]]:
    def split(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        parts = [_read_batch(folder / name) for name in names]
        return np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts])

    missing = [
        n
        for n in ["test_batch"] + [f"data_batch_{i}" for i in range(1, 6)]
        if not (folder / n).is_file()
    ]
    if missing:
        raise DataError(f"{folder} lacks {', '.join(missing)}")
    train_x, train_y = split([f"data_batch_{i}" for i in range(1, 6)])
    test_x, test_y = split(["test_batch"])
    meta = folder / "batches.meta"
    classes = _unpickle(meta)["label_names"] if meta.is_file() else [str(i) for i in range(10)]
    arrays = {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}
    return arrays, classes
