"""An image-classification dataset from a source (a Hugging Face Hub id, a folder of HF
parquet files, torchvision's cifar-10-batches-py or ImageFolder layout) to uint8 arrays.

Images are decoded once, in the driver, and cached on disk as NCHW uint8 `.npy`
files keyed by the source and its content; later runs memory-map the cache and start
in well under a second (a cache that does not match its meta.json is decoded again).
Nothing decodes an image inside a training loop. CIFAR-10 is the default; any other
dataset brings its own classes, image size and channels (grey or colour), which a
model is built for (`Shape`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import re
import shutil
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from fedsim.ground import insides
from fedsim.ground.config import flag
from fedsim.ground.errors import ConfigError
from fedsim.ground.files import cache_root

IMAGE_SHAPE = (3, 32, 32)  # CIFAR-10's (channels, height, width)
NUM_CLASSES = 10  # CIFAR-10's
# An ImageFolder's images: torchvision's ImageFolder's suffixes, and GIF, which decodes.
# One fedsim cannot decode (BMP, TIFF, PPM, PGM) is refused by name, never left out.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".ppm", ".pgm")
_ARRAYS = ("train_x", "train_y", "test_x", "test_y")
_CACHE_VERSION = "1"
Decode = Callable[[], tuple[dict[str, np.ndarray], list[str]]]


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


def read_cached(folder: Path, source: str = "") -> DecodedDataset:
    """A decoded cache folder as written by `load_images`, memory-mapped: how a client
    process on the same machine opens the very files the driver did."""
    stored = _read_cache(folder)
    if stored is None:
        raise ConfigError("FEDSIM_CACHE", f"{folder} is not a complete decoded cache")
    arrays, classes = stored
    return DecodedDataset(
        **arrays, classes=tuple(classes), key=folder.name, source=source, folder=folder
    )


def load_images(source: str, cache: Path | None = None) -> DecodedDataset:
    """Resolve `source`, decode it once into the cache, and return memory-mapped arrays."""
    cache = cache or cache_root()
    path = Path(source).expanduser()
    if path.is_dir():
        found = _locate(path)
        if isinstance(found, Path):
            files = sorted(p for p in found.iterdir() if p.is_file())
            key = _content_key("batches", files)
            return _cached(cache, key, source, lambda: _read_batches(found))
        if isinstance(found, ImageFolder):
            if left_out := found.left_out():
                shown = ", ".join(left_out[:3]) + (", ..." if len(left_out) > 3 else "")
                print(
                    f"fedsim: --data: {len(left_out)} files of {path} are not images in a "
                    f"class folder and are not read ({shown})",
                    flush=True,
                )
            key = _content_key("imagefolder", found.files(), names=found.names())
            return _cached(cache, key, source, found.decode)
        key = _content_key("parquet", found["train"] + found["test"])
        return _cached(cache, key, source, lambda: _read_parquet(found))
    if path.exists():
        raise DataError(f"{source} is a file, not a dataset folder")
    if _looks_like_path(source):
        raise DataError(f"{source} does not exist")
    return _load_hub(source, cache)


def _looks_like_path(source: str) -> bool:
    return source.startswith((".", "/", "~")) or source.count("/") != 1


def _locate(path: Path) -> Path | ImageFolder | dict[str, list[Path]]:
    """The one cifar-10-batches-py folder under `path`, else the parquet files of each
    split, else an ImageFolder layout (train/ and test/, a folder of images per class).
    Two copies of the dataset would be read as one with every image twice, so they are
    refused rather than concatenated."""
    batches = sorted({p.parent for p in path.rglob("data_batch_1") if p.is_file()})
    splits = {split: _split_files(path, split) for split in ("train", "test")}
    parquet = {file.parent for files in splits.values() for file in files}
    if len(batches) > 1 or (batches and parquet):
        raise _copies(path, batches + sorted(parquet))
    if batches:
        return batches[0]
    if not splits["train"] and not splits["test"] and (path / "train").is_dir():
        return ImageFolder(path)
    if not splits["train"] or not splits["test"]:
        raise DataError(
            f"{path} is not a dataset: expected Hugging Face parquet files "
            "(train-*.parquet and test-*.parquet), a cifar-10-batches-py folder, or "
            "train/ and test/ folders with a folder of images per class (ImageFolder)"
        )
    return splits


def _split_files(path: Path, split: str) -> list[Path]:
    """The parquet shards of `split`, all from one folder and, where their names count
    them (train-00000-of-00002.parquet), all of them: a missing shard is missing data."""
    files = sorted(path.rglob(f"{split}-*.parquet")) or sorted(path.rglob(f"{split}.parquet"))
    folders = sorted({file.parent for file in files})
    if len(folders) > 1:
        raise _copies(path, folders)
    counted = [re.fullmatch(rf"{split}-(\d+)-of-(\d+)\.parquet", file.name) for file in files]
    if files and all(counted):
        totals = {int(match[2]) for match in counted}
        if totals != {len(files)}:
            raise DataError(
                f"{folders[0]} has {len(files)} {split} shards, but their names say "
                f"{' or '.join(map(str, sorted(totals)))}"
            )
    return files


def _copies(path: Path, folders: list[Path]) -> DataError:
    return DataError(
        f"{path} holds more than one copy of the dataset ({', '.join(map(str, folders))}); "
        "point --data at one of them"
    )


def _content_key(kind: str, files: list[Path], names: list[str] | None = None) -> str:
    """The files' names (`names`: as given, else the file names) and contents."""
    digest = hashlib.sha256(f"{_CACHE_VERSION}:{kind}".encode())
    for file, name in zip(files, names or [file.name for file in files], strict=True):
        digest.update(name.encode())
        with open(file, "rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()[:24]


# --- the decoded cache ----------------------------------------------------------------


def _cached(cache: Path, key: str, source: str, decode: Decode) -> DecodedDataset:
    """The arrays from the cache, decoded (again) first when they are missing or do not
    verify: a full disk or a killed copy leaves a truncated cache, which must cost one
    decode, not a failed run or wrong data."""
    folder = cache / "decoded" / key
    if _read_cache(folder) is None:
        _rebuild(folder, source, decode)
    return read_cached(folder, source)


def _describe(array: np.ndarray) -> dict[str, Any]:
    return {"shape": list(array.shape), "dtype": str(array.dtype)}


def _read_cache(folder: Path) -> tuple[dict[str, np.ndarray], list[str]] | None:
    """The memory-mapped arrays and class names; None unless every array is there with
    the shape and dtype meta.json records (caches written before it recorded them too)."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in _ARRAYS}
    except (OSError, ValueError, EOFError):  # missing, truncated or garbled
        return None
    described = {name: _describe(array) for name, array in arrays.items()}
    if not isinstance(meta, dict) or meta.get("arrays") != described:
        return None
    if not isinstance(meta.get("classes"), list):
        return None
    return arrays, meta["classes"]


def _rebuild(folder: Path, source: str, decode: Decode) -> None:
    """Decode into a staging folder and move it into place in one rename. The staging
    folder is made first, so an unwritable cache fails at once, not after the decode."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tmp-"))
    except OSError as error:
        raise _unwritable(folder, error) from None
    try:
        arrays, classes = decode()
        arrays = _as_colour_where_either_is(arrays)
        meta = {
            "source": source,
            "classes": list(classes),
            "arrays": {name: _describe(arrays[name]) for name in _ARRAYS},
        }
        try:
            for name in _ARRAYS:
                np.save(tmp / f"{name}.npy", arrays[name])
            (tmp / "meta.json").write_text(json.dumps(meta))
            _install(tmp, folder)
        except OSError as error:
            raise _unwritable(folder, error) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _install(tmp: Path, folder: Path) -> None:
    """Replace a cache that does not verify (set aside first: a directory is renamed only
    onto an empty one); keep one that another process installed meanwhile."""
    if folder.exists() and _read_cache(folder) is None:
        stale = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".stale-"))
        os.replace(folder, stale)
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.replace(tmp, folder)
    except OSError:  # another process finished the same cache first
        if _read_cache(folder) is None:
            raise


def _as_colour_where_either_is(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One channel count for both splits: a grey split beside a colour one is made RGB
    (its one channel three times, as decoding it as RGB does), so that one model takes
    both; a split is grey only where every image of the data is."""
    channels = {arrays[f"{split}_x"].shape[1] for split in ("train", "test")}
    if channels != {1, 3}:
        return arrays
    return {
        name: np.repeat(array, 3, axis=1) if name.endswith("_x") and array.shape[1] == 1 else array
        for name, array in arrays.items()
    }


def _unwritable(folder: Path, error: OSError) -> ConfigError:
    return ConfigError("FEDSIM_CACHE", f"cannot write the decoded data to {folder}: {error}")


# --- torchvision's cifar-10-batches-py ------------------------------------------------


def _unpickle(file: Path) -> Any:
    try:
        with open(file, "rb") as handle:
            return pickle.load(handle, encoding="latin1")
    except Exception as error:
        raise DataError(f"{file}: not a readable CIFAR-10 batch ({error})") from error


def _check_labels(labels: np.ndarray, where: str, classes: int = NUM_CLASSES) -> None:
    """Every label must index one of the classes: the model has one output per class,
    and partitions and label counts index by label."""
    bad = np.unique(labels[(labels < 0) | (labels >= classes)])
    if bad.size:
        shown = ", ".join(map(str, bad[:5])) + (", ..." if bad.size > 5 else "")
        raise DataError(f"{where} has labels outside 0-{classes - 1}: {shown}")


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
    _check_labels(labels, str(file))
    return data.reshape(-1, *IMAGE_SHAPE), labels.astype(np.int64)


def _read_batches(folder: Path) -> tuple[dict[str, np.ndarray], list[str]]:
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


# --- Hugging Face parquet (local folder or the hub) -----------------------------------


def _read_parquet(splits: dict[str, list[Path]]) -> tuple[dict[str, np.ndarray], list[str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays: dict[str, np.ndarray] = {}
    tables = {}
    for split, files in splits.items():
        try:
            tables[split] = pa.concat_tables(pq.read_table(f) for f in files)
        except (pa.ArrowException, OSError) as error:
            raise DataError(f"cannot read the {split} parquet files: {error}") from error
    features = _hf_features(tables["train"].schema.metadata or {})
    for split, table in tables.items():
        arrays[f"{split}_x"], arrays[f"{split}_y"] = _decode_table(table, features, split)
    return arrays, _classes(features, tables["train"], arrays)


def _hf_features(metadata: dict) -> dict:
    try:
        return json.loads(metadata[b"huggingface"])["info"]["features"]
    except (KeyError, ValueError):
        return {}


def _columns(table: Any, features: dict, split: str) -> tuple[str, str]:
    """The image and label columns: by HF feature type, else by name; each must be in
    the split's table (metadata may name a column that was since dropped)."""
    names = table.column_names
    typed = {
        kind: [k for k, v in features.items() if v.get("_type") == kind and k in names]
        for kind in ("Image", "ClassLabel")
    }
    image_col = next(iter(typed["Image"]), None) or next(
        (c for c in ("img", "image") if c in names), None
    )
    label_col = next(iter(typed["ClassLabel"]), None) or next(
        (c for c in ("label", "labels", "fine_label") if c in names), None
    )
    missing = [
        f"no {what} column ({hint})"
        for what, found, hint in (
            ("image", image_col, "an HF Image feature, or one named img or image"),
            ("label", label_col, "an HF ClassLabel feature, or one named label or labels"),
        )
        if found is None
    ]
    if missing:
        raise DataError(f"the {split} split has {' and '.join(missing)}; its columns: {names}")
    return image_col, label_col


def _classes(features: dict, table: Any, arrays: dict[str, np.ndarray]) -> list[str]:
    """The class names the data declares (an HF ClassLabel), else 0 to the largest label
    either split holds; each split's labels are checked against them."""
    _, label_col = _columns(table, features, "train")
    names = features.get(label_col, {}).get("names")
    if not names:
        largest = max(int(arrays[f"{split}_y"].max(initial=0)) for split in ("train", "test"))
        names = [str(i) for i in range(largest + 1)]
    for split in ("train", "test"):
        _check_labels(arrays[f"{split}_y"], f"the {split} split", len(names))
    return list(names)


def _decode_table(table: Any, features: dict, split: str) -> tuple[np.ndarray, np.ndarray]:
    image_col, label_col = _columns(table, features, split)
    if table.num_rows == 0:
        raise DataError(f"the {split} split has no rows")
    encoded = _encoded_images(table.column(image_col), image_col, split)
    labels = _column_labels(table.column(label_col), label_col, split)
    return decode_images(encoded, split), labels


def _encoded_images(column: Any, name: str, split: str) -> list[bytes]:
    """The bytes of an HF Image column (a struct with `bytes`) or of a binary column;
    anything else (numbers, strings, raw pixels) is refused, not read as image bytes."""
    import pyarrow as pa

    images = column.combine_chunks()
    if pa.types.is_struct(images.type) and images.type.get_field_index("bytes") >= 0:
        images = images.field("bytes")
    if not (pa.types.is_binary(images.type) or pa.types.is_large_binary(images.type)):
        raise DataError(
            f"the {split} split's image column {name!r} holds {column.type}, expected "
            "encoded images (binary, or a struct with bytes)"
        )
    return images.to_pylist()


def _column_labels(column: Any, name: str, split: str) -> np.ndarray:
    """Integer class indices, one per row: a null would turn into a huge negative int."""
    import pyarrow as pa

    if not pa.types.is_integer(column.type):
        raise DataError(
            f"the {split} split's label column {name!r} holds {column.type}, "
            "expected integer class indices"
        )
    if column.null_count:
        raise DataError(f"the {split} split has {column.null_count} rows without a label")
    return np.asarray(column.to_numpy(), dtype=np.int64)  # checked against the classes


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


def read_column(source: str, column: str) -> np.ndarray:
    """The train split's `column`, row for row with its images (the client of each
    example, for --partition natural). Only a folder of parquet files has columns
    besides the images and the labels."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    option = flag("partition_column")
    path = Path(source).expanduser()
    found = _locate(path) if path.is_dir() else None
    if not isinstance(found, dict):
        raise ConfigError(
            option,
            f"{source} has no columns besides its images and labels; a folder of Hugging "
            "Face parquet files has",
        )
    names = pq.read_schema(found["train"][0]).names
    if column not in names:
        raise ConfigError(option, f"the train split has no column {column!r} ({', '.join(names)})")
    values = pa.concat_tables(pq.read_table(f, columns=[column]) for f in found["train"])[column]
    kind = values.type
    if not (
        pa.types.is_integer(kind)
        or pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
        or pa.types.is_floating(kind)
        or pa.types.is_boolean(kind)
    ):
        raise ConfigError(
            option,
            f"{column!r} holds {kind}, not a client's name or number (is it the image column?)",
        )
    if values.null_count:
        raise ConfigError(option, f"{values.null_count} rows of {column!r} name no client")
    found_values = np.asarray(values.to_pylist())
    if pa.types.is_floating(kind) and (nan := int(np.isnan(found_values).sum())):
        raise ConfigError(option, f"{nan} rows of {column!r} are NaN: they name no client")
    return found_values


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP probe, so an offline machine fails in seconds rather than after the
    hub client's minute of retries. HF_HUB_OFFLINE=1 skips it (use the local HF cache)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return True
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=timeout).close()
    except OSError:
        return False
    return True


def _load_hub(dataset_id: str, cache: Path) -> DecodedDataset:
    if not _hub_reachable():
        raise DataError(
            f"the Hugging Face Hub is unreachable, so {dataset_id!r} cannot be downloaded; "
            "pass --data with a local folder (HF parquet or cifar-10-batches-py)"
        )
    import datasets

    try:
        loaded = datasets.load_dataset(dataset_id)
    except Exception as error:  # network, auth, or missing dataset: all end the same way
        raise DataError(
            f"cannot load {dataset_id!r} from the Hugging Face Hub ({type(error).__name__}); "
            "offline, pass --data with a local folder (HF parquet or cifar-10-batches-py)"
        ) from error
    if "train" not in loaded or "test" not in loaded:
        raise DataError(f"{dataset_id!r} has no train and test splits")
    key = hashlib.sha256(
        f"{_CACHE_VERSION}:hub:{dataset_id}:{insides.fingerprint(loaded['train'])}:"
        f"{insides.fingerprint(loaded['test'])}".encode()
    ).hexdigest()[:24]

    def decode() -> tuple[dict[str, np.ndarray], list[str]]:
        arrays: dict[str, np.ndarray] = {}
        features = {
            name: {"_type": type(feature).__name__, "names": getattr(feature, "names", None)}
            for name, feature in loaded["train"].features.items()
        }
        for split in ("train", "test"):
            table = loaded[split].data.table
            arrays[f"{split}_x"], arrays[f"{split}_y"] = _decode_table(table, features, split)
        return arrays, _classes(features, loaded["train"].data.table, arrays)

    return _cached(cache, key, dataset_id, decode)
