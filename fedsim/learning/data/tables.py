"""Tables: rows of numeric features and an integer label. FLamby's Fed-Heart-Disease
(the four UCI `processed.<centre>.data` files, prepared as FLamby prepares them), and
any table with train and test splits as CSV or parquet files (a label column, numeric
features, and optionally a column naming each row's group: --partition-column)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fedsim.learning.data.dataset import DataError
from fedsim.learning.data.images import check_labels

# FLamby's centres, in its order (flamby/datasets/fed_heart_disease/dataset.py)
HEART_CENTRES = ("cleveland", "hungarian", "switzerland", "va")
HEART_FILE = "processed.{}.data"
HEART_TRAIN_FRACTION = 0.66  # FLamby's train_fraction
HEART_SPLIT_SEED = 43  # FLamby's random_state for every centre's split
LABEL_COLUMNS = ("label", "labels", "target")  # a table's label column, by name


def heart_disease_files(folder: Path) -> list[Path] | None:
    """The four centres' files when `folder` holds them (None: it is not that data set)."""
    files = [folder / HEART_FILE.format(centre) for centre in HEART_CENTRES]
    found = [file for file in files if file.is_file()]
    if not found:
        return None
    if len(found) < len(files):
        missing = ", ".join(file.name for file in files if not file.is_file())
        raise DataError(f"{folder} holds part of UCI Heart Disease: {missing} missing")
    return files


def read_heart_disease(
    files: list[Path], pooled: bool = False
) -> tuple[dict[str, np.ndarray], list[str], list[str]]:
    """FLamby's HeartDiseaseRaw, step for step: per centre, columns 10-12 dropped, rows
    with a missing value dropped, the label made binary, a stratified 66/34 split with
    scikit-learn's train_test_split(random_state=43) (stratified where both labels have
    more than two rows, as FLamby's); columns 2 and 6 one-hot encoded over all centres
    (first level dropped); each centre's features standardised by its own training
    rows' mean and (unbiased) standard deviation, + 1e-9, in float32 as torch computes
    them (`pooled`: every row by all centres' training rows, as FLamby trains its pooled
    baseline). Rows keep their order within a centre; the centres come in FLamby's order."""
    import pandas as pd
    import torch

    frames, labels, centres, train = [], [], [], []
    for centre, file in enumerate(files):
        features, label, is_train = _heart_centre(file)
        frames.append(features)
        labels.append(label)
        centres.append(np.full(len(label), centre, dtype=np.int64))
        train.append(is_train)
    table = pd.get_dummies(pd.concat(frames, ignore_index=True), columns=[2, 6], drop_first=True)
    x = torch.from_numpy(table.to_numpy(dtype=np.float32))
    y, centre, is_train = np.concatenate(labels), np.concatenate(centres), np.concatenate(train)
    standardised = torch.empty_like(x)
    for index in range(len(files)):
        rows = torch.from_numpy(centre == index) if not pooled else torch.ones(len(x), dtype=bool)
        fitted = x[rows & torch.from_numpy(is_train)]
        mean, std = fitted.mean(axis=0), fitted.std(axis=0)
        standardised[rows] = (x[rows] - mean) / (std + 1e-9)
    values = standardised.numpy()
    arrays = {
        "train_x": values[is_train],
        "train_y": y[is_train],
        "test_x": values[~is_train],
        "test_y": y[~is_train],
        "train_groups": centre[is_train],
        "test_groups": centre[~is_train],
    }
    return arrays, ["no disease", "disease"], list(HEART_CENTRES)


def _heart_centre(file: Path) -> tuple[Any, np.ndarray, np.ndarray]:
    """One centre's features (a frame), binary labels and which rows train, as FLamby's
    loop over the centres makes them."""
    import pandas as pd
    from sklearn.model_selection import train_test_split

    try:
        frame = pd.read_csv(file, header=None)
    except (OSError, ValueError) as error:
        raise DataError(f"{file}: not a readable table ({error})") from None
    if frame.shape[1] != 14:
        raise DataError(f"{file}: {frame.shape[1]} columns, expected UCI's 14")
    frame = frame.replace("?", np.nan).drop([10, 11, 12], axis=1).dropna(axis=0)
    try:
        frame = frame.apply(pd.to_numeric)
    except ValueError as error:
        raise DataError(f"{file}: a value is not a number ({error})") from None
    label = (frame.iloc[:, -1] != 0).astype(np.int64).to_numpy()
    rows = len(frame)
    levels = np.unique(label)
    both = len(levels) > 1 and all((label == v).sum() > 2 for v in levels)
    picked, _ = train_test_split(
        np.arange(rows),
        test_size=1.0 - HEART_TRAIN_FRACTION,
        train_size=HEART_TRAIN_FRACTION,
        random_state=HEART_SPLIT_SEED,
        shuffle=True,
        stratify=label if both else None,
    )
    is_train = np.zeros(rows, dtype=bool)
    is_train[picked] = True
    return frame.iloc[:, :-1], label, is_train


def csv_files(folder: Path) -> dict[str, list[Path]] | None:
    """A table's train.csv and test.csv when `folder` holds them."""
    found = {split: [folder / f"{split}.csv"] for split in ("train", "test")}
    return found if all(files[0].is_file() for files in found.values()) else None


def is_table(files: list[Path]) -> bool:
    """Whether a split's `files` hold a table: CSV, or parquet without an image column."""
    import pyarrow.parquet as pq

    if files[0].suffix == ".csv":
        return True

    try:
        schema = pq.read_schema(files[0])
    except Exception:  # unreadable: the image reader says why
        return False
    hf = (schema.metadata or {}).get(b"huggingface", b"")
    return not ({"img", "image"} & set(schema.names)) and b'"Image"' not in hf


def read_table(
    files: dict[str, list[Path]], group_column: str = ""
) -> tuple[dict[str, np.ndarray], list[str]] | tuple[dict[str, np.ndarray], list[str], list[str]]:
    """Each split's numeric feature columns (float32, in the train split's order), its
    integer labels (a column named label, labels or target) and, with `group_column`,
    each row's group (its values, by name, shared by both splits)."""
    import pandas as pd

    tables = {
        split: pd.concat([_read(file) for file in paths], ignore_index=True)
        for split, paths in files.items()
    }
    named = {split: paths[0] for split, paths in files.items()}  # for messages
    names = list(tables["train"].columns)
    label = next((name for name in LABEL_COLUMNS if name in names), None)
    if label is None:
        raise DataError(
            f"{named['train']} has no label column (one named {', '.join(LABEL_COLUMNS)}); "
            f"its columns: {', '.join(map(str, names))}"
        )
    if group_column and group_column not in names:
        raise DataError(f"{named['train']} has no column {group_column!r} (--partition-column)")
    features = [name for name in names if name not in (label, group_column)]
    arrays: dict[str, np.ndarray] = {}
    groups: list[str] = []
    if group_column:
        values = {split: tables[split][group_column].astype(str) for split in tables}
        groups = sorted(set(values["train"]) | set(values["test"]))
        code = {name: index for index, name in enumerate(groups)}
        for split in tables:
            arrays[f"{split}_groups"] = values[split].map(code).to_numpy(dtype=np.int64)
    for split, table in tables.items():
        if len(table) == 0:
            raise DataError(f"{named[split]} has no rows")
        missing = [name for name in [label, *features] if name not in table.columns]
        if missing:
            raise DataError(f"{named[split]} lacks the columns {', '.join(map(str, missing))}")
        arrays[f"{split}_x"] = _numbers(table[features], named[split])
        arrays[f"{split}_y"] = _labels(table[label], named[split])
    classes = [str(i) for i in range(int(max(arrays["train_y"].max(), arrays["test_y"].max())) + 1)]
    for split in tables:
        check_labels(arrays[f"{split}_y"], str(named[split]), len(classes))
    return (arrays, classes, groups) if group_column else (arrays, classes)


def _read(file: Path) -> Any:
    import pandas as pd

    try:
        return pd.read_parquet(file) if file.suffix == ".parquet" else pd.read_csv(file)
    except Exception as error:  # pandas' and pyarrow's many parse errors
        raise DataError(f"{file}: not a readable table ({type(error).__name__}: {error})") from None


def _numbers(frame: Any, file: Path) -> np.ndarray:
    """The feature columns as float32: a column of text (or a missing value) is refused,
    by name, never turned into NaN or dropped."""
    import pandas as pd

    bad = [name for name in frame.columns if not pd.api.types.is_numeric_dtype(frame[name])]
    if bad:
        raise DataError(
            f"{file}: column {bad[0]!r} is not numeric ({frame[bad[0]].dtype}); a table's "
            "features must be numbers (encode categories first)"
        )
    values = frame.to_numpy(dtype=np.float32)
    if not np.isfinite(values).all():
        rows = int((~np.isfinite(values)).any(axis=1).sum())
        raise DataError(f"{file}: {rows} rows have a missing or infinite feature")
    return values


def _labels(column: Any, file: Path) -> np.ndarray:
    import pandas as pd

    if not pd.api.types.is_integer_dtype(column):
        raise DataError(
            f"{file}: label column {column.name!r} holds {column.dtype}, expected integer "
            "class indices"
        )
    return column.to_numpy(dtype=np.int64)
