"""Encoded images (JPEG, PNG, …) to an NCHW uint8 array, and labels checked against the
classes: what every reader of image bytes shares."""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from fedsim.learning.data.dataset import DataError
from fedsim.learning.tasks import NUM_CLASSES


def check_labels(labels: np.ndarray, where: str, classes: int = NUM_CLASSES) -> None:
    """Every label must index one of the classes: the model has one output per class,
    and partitions and label counts index by label."""
    bad = np.unique(labels[(labels < 0) | (labels >= classes)])
    if bad.size:
        shown = ", ".join(map(str, bad[:5])) + (", ..." if bad.size > 5 else "")
        raise DataError(f"{where} has labels outside 0-{classes - 1}: {shown}")


def decode_images(
    encoded: list[bytes], split: str = "images", names: list[str] | None = None
) -> np.ndarray:
    """Decode JPEG/PNG/… bytes to an (N, C, H, W) uint8 array, C 1 when every image is
    grey, else 3 (RGB; an alpha channel is dropped); JPEGs in one batched call. Every
    image must have the same size: fedsim does not resize. An image that does not
    decode is named (`names`: each image's, else its row)."""
    import torch
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg

    if not encoded:
        raise DataError(f"the {split} split has no images")
    if any(blob is None for blob in encoded):
        raise DataError(f"the {split} split has images without bytes")
    tensors = [torch.frombuffer(bytearray(blob), dtype=torch.uint8) for blob in encoded]
    is_jpeg = all(blob[:2] == b"\xff\xd8" for blob in encoded)
    try:
        if is_jpeg:
            decoded = decode_jpeg(tensors, mode=ImageReadMode.UNCHANGED)
        else:
            decoded = [decode_image(t, mode=ImageReadMode.UNCHANGED) for t in tensors]
        if any(image.shape[0] != 1 for image in decoded):  # colour: every image as RGB
            decoded = [
                image if image.shape[0] == 3 else decode_image(t, mode=ImageReadMode.RGB)
                for image, t in zip(decoded, tensors, strict=True)
            ]
    except RuntimeError as error:
        raise DataError(_undecodable(tensors, split, names, error)) from None
    shapes = {tuple(t.shape) for t in decoded}
    if len(shapes) > 1:
        shown = ", ".join(f"{h}x{w}x{c}" for c, h, w in sorted(shapes)[:4])
        raise DataError(f"the {split} images differ in size ({shown}): resize them to one size")
    return torch.stack(decoded).numpy()


def _undecodable(
    tensors: list[Any], split: str, names: list[str] | None, error: RuntimeError
) -> str:
    """Which image does not decode, found by decoding one at a time (only once the
    batch has failed), and why."""
    from torchvision.io import ImageReadMode, decode_image

    for index, tensor in enumerate(tensors):
        try:
            decode_image(tensor, mode=ImageReadMode.UNCHANGED)
        except RuntimeError as own:
            which = names[index] if names else f"the {split} split's row {index}"
            return f"{which} is not an image fedsim can decode ({_last_words(own)})"
    return f"the {split} split holds an image that does not decode ({_last_words(error)})"


def _last_words(error: Exception) -> str:
    """An error's own message, without the C++ location torchvision puts before it."""
    return re.sub(r"^.*?\.cpp:\d+, ", "", str(error)).strip()
