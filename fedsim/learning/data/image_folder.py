"""torchvision's ImageFolder layout: train/ and test/, a folder of images per class."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fedsim.learning.data.dataset import DataError
from fedsim.learning.data.images import decode_images

# An ImageFolder's images: torchvision's ImageFolder's suffixes, and GIF, which decodes.
# One fedsim cannot decode (BMP, TIFF, PPM, PGM) is refused by name, never left out.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".ppm", ".pgm")


class ImageFolder:
    """torchvision's ImageFolder layout, one per split: `train/<class>/…/<image>` and
    `test/<class>/…/<image>`, the classes the train split's folder names, sorted, and
    each class's images found in its folder and every folder below it, in the order
    torchvision's ImageFolder finds them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
        if not self.classes:
            raise DataError(f"{root / 'train'} has no class folders")
        if not (root / "test").is_dir():
            raise DataError(f"{root} has a train/ folder but no test/ folder")
        extra = sorted(p.name for p in (root / "test").iterdir() if p.is_dir())
        if unknown := sorted(set(extra) - set(self.classes)):
            raise DataError(f"{root / 'test'} has classes the train split lacks: {unknown[:5]}")
        self._found = {split: self._walk(split) for split in ("train", "test")}

    def _walk(self, split: str) -> tuple[list[tuple[Path, int]], list[Path]]:
        """The split's images with their labels, and the files left out: those that are
        not images (by suffix, as torchvision tells them) and those outside a class
        folder. Hidden files (.DS_Store) are neither."""
        images: list[tuple[Path, int]] = []
        left_out = [p for p in sorted((self.root / split).iterdir()) if p.is_file() and _shown(p)]
        for label, name in enumerate(self.classes):
            folder = self.root / split / name
            if not folder.is_dir():
                continue
            for parent, _, names in sorted(os.walk(folder, followlinks=True)):
                for file in (Path(parent) / n for n in sorted(names)):
                    if file.suffix.lower() in IMAGE_SUFFIXES:
                        images.append((file, label))
                    elif _shown(file):
                        left_out.append(file)
        return images, left_out

    def images(self, split: str) -> list[tuple[Path, int]]:
        return self._found[split][0]

    def left_out(self) -> list[str]:
        """Files of the folder that are not read, as `split/…/name`."""
        return [
            str(file.relative_to(self.root))
            for split in ("train", "test")
            for file in self._found[split][1]
        ]

    def files(self) -> list[Path]:
        return [file for split in ("train", "test") for file, _ in self.images(split)]

    def names(self) -> list[str]:
        """Each file as `split/class/…/name`: a moved image is another dataset."""
        return [str(file.relative_to(self.root)) for file in self.files()]

    def decode(self) -> tuple[dict[str, np.ndarray], list[str]]:
        arrays: dict[str, np.ndarray] = {}
        for split in ("train", "test"):
            found = self.images(split)
            if not found:
                raise DataError(f"{self.root / split} has no images ({', '.join(IMAGE_SUFFIXES)})")
            names = [str(file.relative_to(self.root)) for file, _ in found]
            encoded = [file.read_bytes() for file, _ in found]
            arrays[f"{split}_x"] = decode_images(encoded, split, names)
            arrays[f"{split}_y"] = np.array([label for _, label in found], dtype=np.int64)
        return arrays, list(self.classes)


def _shown(file: Path) -> bool:
    return not file.name.startswith(".")
