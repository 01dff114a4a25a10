"""CIFAR-10 from a source (hub id, HF parquet folder, cifar-10-batches-py) to uint8 arrays.

Images are decoded once, in the driver, and cached on disk as NCHW uint8 `.npy`
files keyed by the source and its content; later runs memory-map the cache and start
in well under a second. Nothing decodes an image inside a training loop.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from fedsim.config import ConfigError

IMAGE_SHAPE = (3, 32, 32)
_ARRAYS = ("train_x", "train_y", "test_x", "test_y")
_CACHE_VERSION = "1"


class DataError(ConfigError):
    """The data source is missing, unreachable or not CIFAR-shaped (reported on --data)."""

    def __init__(self, message: str) -> None:
        super().__init__("--data", message)


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


def cache_root() -> Path:
    """Where decoded data lives: $FEDSIM_CACHE, else $XDG_CACHE_HOME/fedsim, else ~/.cache."""
    if os.environ.get("FEDSIM_CACHE"):
        return Path(os.environ["FEDSIM_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fedsim"


def load_cifar(source: str, cache: Path | None = None) -> DecodedDataset:
    """Resolve `source`, decode it once into the cache, and return memory-mapped arrays."""
    cache = cache or cache_root()
    path = Path(source).expanduser()
    if path.is_dir():
        batches = _find_batches_folder(path)
        if batches is not None:
            files = sorted(p for p in batches.iterdir() if p.is_file())
            key = _content_key("batches", files)
            return _cached(cache, key, source, lambda: _read_batches(batches))
        splits = _find_parquet_splits(path)
        key = _content_key("parquet", splits["train"] + splits["test"])
        return _cached(cache, key, source, lambda: _read_parquet(splits))
    if path.exists():
        raise DataError(f"{source} is a file, not a dataset folder")
    if _looks_like_path(source):
        raise DataError(f"{source} does not exist")
    return _load_hub(source, cache)


def _looks_like_path(source: str) -> bool:
    return source.startswith((".", "/", "~")) or source.count("/") != 1


def _content_key(kind: str, files: list[Path]) -> str:
    digest = hashlib.sha256(f"{_CACHE_VERSION}:{kind}".encode())
    for file in files:
        digest.update(file.name.encode())
        with open(file, "rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()[:24]


def _cached(cache: Path, key: str, source: str, decode: Any) -> DecodedDataset:
    folder = cache / "decoded" / key
    if not (folder / "meta.json").exists():
        arrays, classes = decode()
        _write_atomically(folder, arrays, {"source": source, "classes": list(classes)})
    meta = json.loads((folder / "meta.json").read_text())
    loaded = {name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in _ARRAYS}
    return DecodedDataset(**loaded, classes=tuple(meta["classes"]), key=key, source=source)


def _write_atomically(folder: Path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tmp-"))
    try:
        for name in _ARRAYS:
            np.save(tmp / f"{name}.npy", arrays[name])
        (tmp / "meta.json").write_text(json.dumps(meta))
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished the same cache first
            if not (folder / "meta.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --- torchvision's cifar-10-batches-py ------------------------------------------------


def _find_batches_folder(path: Path) -> Path | None:
    for candidate in (path, path / "cifar-10-batches-py"):
        if (candidate / "data_batch_1").is_file():
            return candidate
    return None


def _unpickle(file: Path) -> dict:
    try:
        with open(file, "rb") as handle:
            return pickle.load(handle, encoding="latin1")
    except Exception as error:
        raise DataError(f"{file}: not a readable CIFAR-10 batch ({error})") from error


def _read_batches(folder: Path) -> tuple[dict[str, np.ndarray], list[str]]:
    def split(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        parts = [_unpickle(folder / name) for name in names]
        x = np.concatenate([p["data"] for p in parts]).reshape(-1, *IMAGE_SHAPE)
        y = np.concatenate([p["labels"] for p in parts]).astype(np.int64)
        return np.ascontiguousarray(x, dtype=np.uint8), y

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


def _find_parquet_splits(path: Path) -> dict[str, list[Path]]:
    splits = {
        split: sorted(path.rglob(f"{split}-*.parquet")) or sorted(path.rglob(f"{split}.parquet"))
        for split in ("train", "test")
    }
    if not splits["train"] or not splits["test"]:
        raise DataError(
            f"{path} is not a dataset: expected Hugging Face parquet files "
            "(train-*.parquet and test-*.parquet) or a cifar-10-batches-py folder"
        )
    return splits


def _read_parquet(splits: dict[str, list[Path]]) -> tuple[dict[str, np.ndarray], list[str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays: dict[str, np.ndarray] = {}
    classes: list[str] = []
    for split, files in splits.items():
        try:
            table = pa.concat_tables(pq.read_table(f) for f in files)
        except (pa.ArrowException, OSError) as error:
            raise DataError(f"cannot read the {split} parquet files: {error}") from error
        features = _hf_features(table.schema.metadata or {})
        x, y, classes = _decode_table(table, features, split)
        arrays[f"{split}_x"], arrays[f"{split}_y"] = x, y
    return arrays, classes


def _hf_features(metadata: dict) -> dict:
    try:
        return json.loads(metadata[b"huggingface"])["info"]["features"]
    except (KeyError, ValueError):
        return {}


def _decode_table(table: Any, features: dict, split: str) -> tuple[np.ndarray, np.ndarray, list]:
    """Find the image and label columns (by HF feature type, else by name) and decode."""
    image_col = next((k for k, v in features.items() if v.get("_type") == "Image"), None)
    label_col = next((k for k, v in features.items() if v.get("_type") == "ClassLabel"), None)
    names = table.column_names
    image_col = image_col or next((c for c in ("img", "image") if c in names), None)
    label_col = label_col or next((c for c in ("label", "labels") if c in names), None)
    if image_col is None or label_col is None:
        raise DataError(f"the {split} split has no image and label columns (found {names})")
    classes = features.get(label_col, {}).get("names") or [str(i) for i in range(10)]
    images = table.column(image_col).combine_chunks()
    encoded = images.field("bytes").to_pylist() if hasattr(images, "field") else images.to_pylist()
    labels = np.asarray(table.column(label_col).to_numpy(), dtype=np.int64)
    return decode_images(encoded, split), labels, list(classes)


def decode_images(encoded: list[bytes], split: str = "images") -> np.ndarray:
    """Decode JPEG/PNG bytes to an (N, 3, 32, 32) uint8 array; JPEGs in one batched call."""
    import torch
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg

    if any(blob is None for blob in encoded):
        raise DataError(f"the {split} split has images without bytes")
    tensors = [torch.frombuffer(bytearray(blob), dtype=torch.uint8) for blob in encoded]
    is_jpeg = all(blob[:2] == b"\xff\xd8" for blob in encoded)
    try:
        if is_jpeg:
            decoded = decode_jpeg(tensors, mode=ImageReadMode.RGB)
        else:
            decoded = [decode_image(t, mode=ImageReadMode.RGB) for t in tensors]
    except RuntimeError as error:
        raise DataError(
            f"the {split} split holds an image that does not decode ({error})"
        ) from error
    shapes = {tuple(t.shape) for t in decoded}
    if shapes != {IMAGE_SHAPE}:
        raise DataError(f"the {split} images are {sorted(shapes)}, expected {IMAGE_SHAPE}")
    return torch.stack(decoded).numpy()


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
        f"{_CACHE_VERSION}:hub:{dataset_id}:{loaded['train']._fingerprint}:"
        f"{loaded['test']._fingerprint}".encode()
    ).hexdigest()[:24]

    def decode() -> tuple[dict[str, np.ndarray], list[str]]:
        arrays: dict[str, np.ndarray] = {}
        classes: list[str] = []
        for split in ("train", "test"):
            ds = loaded[split]
            features = {
                name: {"_type": type(feature).__name__, "names": getattr(feature, "names", None)}
                for name, feature in ds.features.items()
            }
            x, y, classes = _decode_table(ds.data.table, features, split)
            arrays[f"{split}_x"], arrays[f"{split}_y"] = x, y
        return arrays, classes

    return _cached(cache, key, dataset_id, decode)
