"""A dataset from a source to arrays, one module per kind of source: images (a Hugging
Face Hub id, a folder of HF parquet files, torchvision's cifar-10-batches-py or
ImageFolder layout), tables (UCI Heart Disease as FLamby prepares it; train and test
CSV or parquet files) and text (a play's speeches by speaker, LEAF's Shakespeare task).

A source is read once, in the driver, and cached on disk (fedsim.learning.data.cache);
later runs memory-map the cache and start in well under a second. Nothing decodes or
parses inside a training loop. CIFAR-10 is the default; any other dataset brings its
own task (fedsim.learning.tasks): its classes and the shape of its examples, which a
model is built for.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from fedsim.ground.errors import ConfigError
from fedsim.ground.files import cache_root
from fedsim.ground.option import flag
from fedsim.learning.data.batches import read_batches
from fedsim.learning.data.cache import cached, content_key, read_cached
from fedsim.learning.data.dataset import (
    NORMALIZATIONS,
    RANGE,
    TRAIN_SPLIT,
    DataError,
    DecodedDataset,
    pixel_stats,
)
from fedsim.learning.data.image_folder import IMAGE_SUFFIXES, ImageFolder
from fedsim.learning.data.images import decode_images
from fedsim.learning.data.parquet import load_hub, read_parquet
from fedsim.learning.data.tables import (
    csv_files,
    heart_disease_files,
    is_table,
    read_heart_disease,
    read_table,
)
from fedsim.learning.data.text import read_play, text_file

__all__ = [
    "IMAGE_SUFFIXES",
    "NORMALIZATIONS",
    "RANGE",
    "TRAIN_SPLIT",
    "DataError",
    "DecodedDataset",
    "decode_images",
    "load_dataset",
    "pixel_stats",
    "read_cached",
    "read_column",
]


def load_dataset(source: str, cache: Path | None = None, group_column: str = "") -> DecodedDataset:
    """Resolve `source`, read it once into the cache, and return memory-mapped arrays.
    A table's `group_column` (--partition-column) names each row's group and is not
    one of its features."""
    cache = cache or cache_root()
    path = Path(source).expanduser()
    if path.is_dir():
        if play := text_file(path):
            return cached(cache, content_key("play", [play]), source, lambda: read_play(play))
        if heart := heart_disease_files(path):
            return cached(
                cache, content_key("heart", heart), source, lambda: read_heart_disease(heart)
            )
        found = _locate(path)
        if isinstance(found, dict) and is_table(found["train"]):
            key = content_key(f"table:{group_column}", found["train"] + found["test"])
            return cached(cache, key, source, lambda: read_table(found, group_column))
        if isinstance(found, Path):
            files = sorted(p for p in found.iterdir() if p.is_file())
            key = content_key("batches", files)
            return cached(cache, key, source, lambda: read_batches(found))
        if isinstance(found, ImageFolder):
            if left_out := found.left_out():
                shown = ", ".join(left_out[:3]) + (", ..." if len(left_out) > 3 else "")
                print(
                    f"fedsim: --data: {len(left_out)} files of {path} are not images in a "
                    f"class folder and are not read ({shown})",
                    flush=True,
                )
            key = content_key("imagefolder", found.files(), names=found.names())
            return cached(cache, key, source, found.decode)
        key = content_key("parquet", found["train"] + found["test"])
        return cached(cache, key, source, lambda: read_parquet(found))
    if path.exists():
        raise DataError(f"{source} is a file, not a dataset folder")
    if _looks_like_path(source):
        raise DataError(f"{source} does not exist")
    return load_hub(source, cache)


def _looks_like_path(source: str) -> bool:
    return source.startswith((".", "/", "~")) or source.count("/") != 1


def _locate(path: Path) -> Path | ImageFolder | dict[str, list[Path]]:
    """The one cifar-10-batches-py folder under `path`, else the parquet files of each
    split, else a table's train.csv and test.csv, else an ImageFolder
    layout (train/ and test/, a folder of images per class).
    Two copies of the dataset would be read as one with every image twice, so they are
    refused rather than concatenated."""
    batches = sorted({p.parent for p in path.rglob("data_batch_1") if p.is_file()})
    splits = {split: _split_files(path, split) for split in ("train", "test")}
    parquet = {file.parent for files in splits.values() for file in files}
    if len(batches) > 1 or (batches and parquet):
        raise _copies(path, batches + sorted(parquet))
    if batches:
        return batches[0]
    if not splits["train"] and not splits["test"] and (table := csv_files(path)):
        return table
    if not splits["train"] and not splits["test"] and (path / "train").is_dir():
        return ImageFolder(path)
    if not splits["train"] or not splits["test"]:
        raise DataError(
            f"{path} is not a dataset: expected Hugging Face parquet files "
            "(train-*.parquet and test-*.parquet), a cifar-10-batches-py folder, "
            "train/ and test/ folders with a folder of images per class (ImageFolder), "
            "a table (train.csv and test.csv), UCI Heart Disease's processed.*.data "
            "files, or a play's text (input.txt)"
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
