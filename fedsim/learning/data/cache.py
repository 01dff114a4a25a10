"""The decoded cache: a dataset's arrays as `.npy` files (NCHW uint8 images, float32
rows or uint8 strings; each example's group where the source names groups), keyed by the
source and its content, written once (atomically) and memory-mapped by every later run and
every client process; one that does not read back whole and consistent is decoded
again."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.ground.errors import ConfigError
from fedsim.learning.data.dataset import DecodedDataset

ARRAYS = ("train_x", "train_y", "test_x", "test_y")
GROUP_ARRAYS = ("train_groups", "test_groups")  # where the source names groups
CACHE_VERSION = "1"
# A reader's arrays and class names, then (where it has them) the group names and notes
# (what it left out, by what rule: config.json says them)
Decode = Callable[[], tuple]


def read_cached(folder: Path, source: str = "") -> DecodedDataset:
    """A decoded cache folder as written by `load_images`, memory-mapped: how a client
    process on the same machine opens the very files the driver did."""
    stored = _read_cache(folder)
    if stored is None:
        raise ConfigError("FEDSIM_CACHE", f"{folder} is not a complete decoded cache")
    arrays, classes, groups, notes = stored
    return DecodedDataset(
        **arrays,
        classes=tuple(classes),
        key=folder.name,
        source=source,
        folder=folder,
        groups=tuple(groups),
        notes=notes,
    )


def content_key(kind: str, files: list[Path], names: list[str] | None = None) -> str:
    """The files' names (`names`: as given, else the file names) and contents."""
    digest = hashlib.sha256(f"{CACHE_VERSION}:{kind}".encode())
    for file, name in zip(files, names or [file.name for file in files], strict=True):
        digest.update(name.encode())
        with open(file, "rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()[:24]


def cached(cache: Path, key: str, source: str, decode: Decode) -> DecodedDataset:
    """The arrays from the cache, decoded (again) first when they are missing or do not
    verify: a full disk or a killed copy leaves a truncated cache, which must cost one
    decode, not a failed run or wrong data."""
    folder = cache / "decoded" / key
    if _read_cache(folder) is None:
        _rebuild(folder, source, decode)
    return read_cached(folder, source)


def _describe(array: np.ndarray) -> dict[str, Any]:
    return {"shape": list(array.shape), "dtype": str(array.dtype)}


def _read_cache(folder: Path) -> tuple[dict[str, np.ndarray], list[str], list[str], dict] | None:
    """The memory-mapped arrays, class names, group names and notes; None unless every
    array is there with the shape and dtype meta.json records (caches written before it
    recorded them too)."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        names = ARRAYS + (GROUP_ARRAYS if meta.get("groups") else ())
        arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in names}
    except (OSError, ValueError, EOFError, AttributeError):  # missing, truncated or garbled
        return None
    described = {name: _describe(array) for name, array in arrays.items()}
    if not isinstance(meta, dict) or meta.get("arrays") != described:
        return None
    if not isinstance(meta.get("classes"), list):
        return None
    return arrays, meta["classes"], meta.get("groups", []), meta.get("notes", {})


def _rebuild(folder: Path, source: str, decode: Decode) -> None:
    """Decode into a staging folder and move it into place in one rename. The staging
    folder is made first, so an unwritable cache fails at once, not after the decode."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tmp-"))
    except OSError as error:
        raise _unwritable(folder, error) from None
    try:
        arrays, classes, *named = decode()
        groups = list(named[0]) if named else []
        notes = named[1] if len(named) > 1 else {}
        arrays = _as_colour_where_either_is(arrays)
        names = ARRAYS + (GROUP_ARRAYS if groups else ())
        meta = {
            "source": source,
            "classes": list(classes),
            "arrays": {name: _describe(arrays[name]) for name in names},
        }
        if groups:  # (an image cache's meta.json stays as it was)
            meta["groups"] = groups
        if notes:
            meta["notes"] = notes
        try:
            for name in names:
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
    if arrays["train_x"].ndim != 4:  # not images
        return arrays
    channels = {arrays[f"{split}_x"].shape[1] for split in ("train", "test")}
    if channels != {1, 3}:
        return arrays
    return {
        name: np.repeat(array, 3, axis=1) if name.endswith("_x") and array.shape[1] == 1 else array
        for name, array in arrays.items()
    }


def _unwritable(folder: Path, error: OSError) -> ConfigError:
    return ConfigError("FEDSIM_CACHE", f"cannot write the decoded data to {folder}: {error}")
