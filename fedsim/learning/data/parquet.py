"""Hugging Face's parquet layout, in a local folder or from the Hub: an image column (HF
Image features or a binary column) and an integer label column per split."""

from __future__ import annotations

import hashlib
import json
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from fedsim.ground import insides
from fedsim.learning.data.cache import CACHE_VERSION, cached
from fedsim.learning.data.dataset import DataError, DecodedDataset
from fedsim.learning.data.images import check_labels, decode_images


def read_parquet(splits: dict[str, list[Path]]) -> tuple[dict[str, np.ndarray], list[str]]:
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
        check_labels(arrays[f"{split}_y"], f"the {split} split", len(names))
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


def load_hub(dataset_id: str, cache: Path) -> DecodedDataset:
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
        f"{CACHE_VERSION}:hub:{dataset_id}:{insides.fingerprint(loaded['train'])}:"
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

    return cached(cache, key, dataset_id, decode)
