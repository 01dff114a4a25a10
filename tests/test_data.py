"""Data loading: bad sources are one `--data` (or FEDSIM_CACHE) error, never wrong data."""

from __future__ import annotations

import io
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from fedsim.ground.errors import ConfigError
from fedsim.learning import data, models, tasks
from fedsim.learning.data import DataError, load_dataset
from fedsim.learning.tasks import ImageClassification
from tests.conftest import run_cli, write_cifar_batches

ARRAYS = ("train_x", "train_y", "test_x", "test_y")
CLASSES = [f"class{i}" for i in range(10)]
HF_METADATA = {
    b"huggingface": json.dumps(
        {
            "info": {
                "features": {
                    "img": {"_type": "Image"},
                    "label": {"names": CLASSES, "_type": "ClassLabel"},
                }
            }
        }
    ).encode()
}


def _images(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_parquet(file: Path, labels: list[int], image_column: pa.Array | None = None) -> None:
    """An HF-layout parquet file: `img` structs of PNG bytes (or `image_column`), `label`."""
    if image_column is None:
        blobs = [_png(image) for image in _images(len(labels), seed=len(file.name))]
        image_column = pa.array(
            [{"bytes": blob, "path": None} for blob in blobs],
            pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
        )
    table = pa.table({"img": image_column, "label": pa.array(labels, pa.int64())})
    file.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.replace_schema_metadata(HF_METADATA), file)


def _parquet_folder(root: Path, train: list[int] | None = None, test: list[int] | None = None):
    """root/plain_text/{train,test}-00000-of-00001.parquet, as the hub lays CIFAR-10 out."""
    _write_parquet(root / "plain_text" / "train-00000-of-00001.parquet", train or [0, 1, 2, 3])
    _write_parquet(root / "plain_text" / "test-00000-of-00001.parquet", test or [4, 5])
    return root


def _rewrite_batch(folder: Path, name: str, **changes) -> None:
    batch = pickle.loads((folder / name).read_bytes())
    (folder / name).write_bytes(pickle.dumps({**batch, **changes}))


@pytest.fixture
def batches(tmp_path: Path) -> Path:
    """A small cifar-10-batches-py folder of the test's own, free to damage."""
    return write_cifar_batches(tmp_path / "data" / "cifar-10-batches-py", 50, 10)


# --- what works ---------------------------------------------------------------------


def test_parquet_folder_decodes_to_the_pixels_and_labels(tmp_path) -> None:
    root = _parquet_folder(tmp_path / "cifar", train=[3, 1, 4, 1], test=[5, 9])
    loaded = load_dataset(str(root), tmp_path / "cache")
    expected = _images(4, seed=len("train-00000-of-00001.parquet")).transpose(0, 3, 1, 2)
    assert np.array_equal(loaded.train_x, expected)
    assert loaded.train_y.tolist() == [3, 1, 4, 1] and loaded.test_y.tolist() == [5, 9]
    assert loaded.test_x.shape == (2, 3, 32, 32) and loaded.classes == tuple(CLASSES)


def test_shards_of_one_split_are_concatenated(tmp_path) -> None:
    folder = _parquet_folder(tmp_path / "cifar") / "plain_text"
    (folder / "train-00000-of-00001.parquet").unlink()
    _write_parquet(folder / "train-00000-of-00002.parquet", [0, 1, 2])
    _write_parquet(folder / "train-00001-of-00002.parquet", [7, 8])
    loaded = load_dataset(str(folder.parent), tmp_path / "cache")
    assert loaded.train_y.tolist() == [0, 1, 2, 7, 8] and len(loaded.train_x) == 5


def test_missing_shard_is_refused(tmp_path) -> None:
    folder = _parquet_folder(tmp_path / "cifar") / "plain_text"
    (folder / "train-00000-of-00001.parquet").rename(folder / "train-00000-of-00002.parquet")
    with pytest.raises(DataError, match="has 1 train shards, but their names say 2"):
        load_dataset(str(folder.parent), tmp_path / "cache")


# --- 1. labels outside 0-9 ----------------------------------------------------------


def test_parquet_labels_outside_0_9_are_refused(tmp_path) -> None:
    root = _parquet_folder(tmp_path / "cifar", train=[0, 10, -1, 10])
    with pytest.raises(DataError, match=r"the train split has labels outside 0-9: -1, 10$"):
        load_dataset(str(root), tmp_path / "cache")


def test_batches_labels_outside_0_9_are_refused(batches, tmp_path) -> None:
    _rewrite_batch(batches, "test_batch", labels=[12] + [0] * 9)
    with pytest.raises(DataError, match=r"test_batch has labels outside 0-9: 12$"):
        load_dataset(str(batches), tmp_path / "cache")


# --- 2. columns of the wrong type ---------------------------------------------------


@pytest.mark.parametrize(
    ("column", "type_name"),
    [(pa.array([1, 2, 3, 4]), "int64"), (pa.array(["a", "b", "c", "d"]), "string")],
    ids=["ints", "strings"],
)
def test_image_column_of_wrong_type_is_refused(column, type_name, tmp_path) -> None:
    root = _parquet_folder(tmp_path / "cifar")
    _write_parquet(root / "plain_text" / "train-00000-of-00001.parquet", [0, 1, 2, 3], column)
    with pytest.raises(DataError, match=f"image column 'img' holds {type_name}, expected encoded"):
        load_dataset(str(root), tmp_path / "cache")


def test_label_column_of_wrong_type_is_refused(tmp_path) -> None:
    root = _parquet_folder(tmp_path / "cifar")
    file = root / "plain_text" / "test-00000-of-00001.parquet"
    table = pq.read_table(file)
    table = table.set_column(1, "label", pa.array(["cat", "dog"]))
    pq.write_table(table, file)
    with pytest.raises(DataError, match="label column 'label' holds string, expected integer"):
        load_dataset(str(root), tmp_path / "cache")


# --- 3. batches of the wrong size ---------------------------------------------------


def test_batch_with_a_partial_image_is_refused(batches, tmp_path) -> None:
    _rewrite_batch(batches, "data_batch_3", data=np.zeros(10 * 3072 - 1, np.uint8))
    with pytest.raises(DataError, match=r"data_batch_3: data is uint8 of shape \(30719,\)"):
        load_dataset(str(batches), tmp_path / "cache")


def test_batch_with_fewer_labels_than_images_is_refused(batches, tmp_path) -> None:
    _rewrite_batch(batches, "data_batch_2", labels=[1] * 9)
    with pytest.raises(DataError, match="data_batch_2: 9 labels for 10 images"):
        load_dataset(str(batches), tmp_path / "cache")


# --- 4. an unwritable cache ---------------------------------------------------------


def test_unwritable_cache_names_FEDSIM_CACHE_before_decoding(batches, tmp_path) -> None:
    """The cache is found unwritable before anything is decoded (a decode would have
    said, first, that this data is damaged)."""
    (tmp_path / "afile").write_text("")
    (batches / "data_batch_3").write_bytes(b"not a batch")
    with pytest.raises(ConfigError, match="cannot write the decoded data") as raised:
        load_dataset(str(batches), tmp_path / "afile" / "cache")
    assert raised.value.option == "FEDSIM_CACHE" and not isinstance(raised.value, DataError)


# --- 5. a damaged cache is decoded again --------------------------------------------


def _truncate(file: Path) -> None:
    file.write_bytes(file.read_bytes()[:-100])


DAMAGE = {
    "train_x truncated": lambda f: _truncate(f / "train_x.npy"),
    "test_y empty": lambda f: (f / "test_y.npy").write_bytes(b""),
    "test_x missing": lambda f: (f / "test_x.npy").unlink(),
    "meta.json garbage": lambda f: (f / "meta.json").write_bytes(b"\xff{not json"),
    "meta.json of an older version": lambda f: (f / "meta.json").write_text(
        json.dumps({"source": "x", "classes": CLASSES})
    ),
    "train_y of another length": lambda f: np.save(f / "train_y.npy", np.zeros(7, np.int64)),
    "meta.json missing": lambda f: (f / "meta.json").unlink(),
}


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
def test_damaged_cache_is_decoded_again(damage, batches, tmp_path) -> None:
    cache = tmp_path / "cache"
    first = load_dataset(str(batches), cache)
    arrays = {name: np.array(getattr(first, name)) for name in ARRAYS}  # off the damaged map
    (folder,) = (cache / "decoded").iterdir()
    damage(folder)
    again = load_dataset(str(batches), cache)
    for name in ARRAYS:
        assert np.array_equal(getattr(again, name), arrays[name]), name
    assert again.classes == first.classes and again.key == first.key
    rebuilt = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.iterdir()}
    load_dataset(str(batches), cache)  # the rebuilt cache verifies: no third decode
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.iterdir()} == rebuilt
    assert [p.name for p in (cache / "decoded").iterdir()] == [folder.name]


# --- 6. two copies of the dataset ---------------------------------------------------


def test_two_parquet_copies_are_refused(tmp_path) -> None:
    root = _parquet_folder(tmp_path / "cifar")
    shutil.copytree(root / "plain_text", root / "copy" / "plain_text")
    message = (
        rf"{root} holds more than one copy of the dataset \({root}/copy/plain_text, "
        rf"{root}/plain_text\); point --data at one of them"
    )
    with pytest.raises(DataError, match=message):
        load_dataset(str(root), tmp_path / "cache")


def test_two_batches_copies_are_refused(batches, tmp_path) -> None:
    shutil.copytree(batches, tmp_path / "data" / "copy" / "cifar-10-batches-py")
    with pytest.raises(DataError, match="more than one copy of the dataset"):
        load_dataset(str(tmp_path / "data"), tmp_path / "cache")


def test_batches_beside_parquet_are_refused(batches, tmp_path) -> None:
    _parquet_folder(tmp_path / "data")
    with pytest.raises(DataError, match=f"more than one copy of the dataset \\({batches}, "):
        load_dataset(str(tmp_path / "data"), tmp_path / "cache")


# --- through the CLI ----------------------------------------------------------------


def test_bad_data_is_one_line_exit_2_and_nothing_written(batches, tmp_path) -> None:
    _rewrite_batch(batches, "data_batch_1", labels=[-3] + [0] * 9)
    results = tmp_path / "results"
    done = run_cli("--data", str(batches), "--results-dir", str(results), timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --data: "), done.stderr
    assert "data_batch_1 has labels outside 0-9: -3" in lines[0]
    assert not results.exists()


# --- datasets of their own shape and classes (issue 27) ---------------------------------


def _digit(label: int, rng: np.random.Generator, size: int = 28) -> np.ndarray:
    """A grey image of a bar whose position says its class, with noise: learnable."""
    image = rng.integers(0, 60, (size, size), dtype=np.uint8)
    image[:, 4 + 5 * label : 8 + 5 * label] = 230
    return image


def _image_folder(root: Path, classes: int, per_class: tuple[int, int], size: int = 28) -> Path:
    """root/{train,test}/<class>/<n>.png, grey, as torchvision's ImageFolder reads it."""
    rng = np.random.default_rng(0)
    for split, count in zip(("train", "test"), per_class, strict=True):
        for label in range(classes):
            folder = root / split / f"digit{label}"
            folder.mkdir(parents=True)
            for n in range(count):
                (folder / f"{n}.png").write_bytes(_png(_digit(label, rng, size)))
    return root


def test_an_image_folder_keeps_its_channels_size_and_classes(tmp_path) -> None:
    root = _image_folder(tmp_path / "digits", classes=3, per_class=(4, 2))
    loaded = load_dataset(str(root), tmp_path / "cache")
    assert loaded.train_x.shape == (12, 1, 28, 28) and loaded.test_x.shape == (6, 1, 28, 28)
    assert loaded.classes == ("digit0", "digit1", "digit2")
    assert loaded.train_y.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert loaded.task == ImageClassification((1, 28, 28), 3)


def test_parquet_without_class_names_takes_its_classes_from_the_labels(tmp_path) -> None:
    image_column = pa.array([_png(_images(1, seed=i)[0, :16, :16]) for i in range(5)])
    for split, labels in (("train", [0, 2, 1, 2, 0]), ("test", [1, 0, 2, 2, 1])):
        table = pa.table({"image": image_column, "label": pa.array(labels, pa.int64())})
        (tmp_path / "d").mkdir(exist_ok=True)
        pq.write_table(table, tmp_path / "d" / f"{split}.parquet")
    loaded = load_dataset(str(tmp_path / "d"), tmp_path / "cache")
    assert loaded.task == ImageClassification((3, 16, 16), 3) and loaded.classes == ("0", "1", "2")


def test_pixel_statistics_are_the_whole_splits_per_channel(tmp_path) -> None:
    images = np.random.default_rng(3).integers(0, 256, (10, 3, 4, 5), dtype=np.uint8)
    images[:, 2] = 7  # a constant channel is centred, not divided by zero
    stats = data.pixel_stats(images, chunk=3)  # chunks that do not divide the split
    wide = images.astype(np.float64)
    assert stats.mean == pytest.approx(tuple(wide.mean(axis=(0, 2, 3))), abs=1e-12)
    assert stats.std[:2] == pytest.approx(tuple(wide.std(axis=(0, 2, 3))[:2]), abs=1e-9)
    assert stats.std[2] == 1.0
    task = ImageClassification((3, 4, 5), 10, stats)
    assert tasks.described(task.describe()) == task


def test_images_of_different_sizes_are_refused(tmp_path) -> None:
    root = _image_folder(tmp_path / "digits", classes=2, per_class=(2, 1))
    (root / "train" / "digit0" / "big.png").write_bytes(_png(np.zeros((30, 30), np.uint8)))
    with pytest.raises(DataError, match=r"the train images differ in size \(28x28x1, 30x30x1\)"):
        load_dataset(str(root), tmp_path / "cache")


MODELS = """
from torch import nn

def ten_classes():
    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10))

def not_a_model():
    return "a string"
"""


def test_a_model_that_does_not_fit_the_data_is_refused(tmp_path, monkeypatch):
    """What fedsim.runner.inputs.prepare says, once the data is loaded, before the run folder is
    made (the CLI prints it as its one `error:` line, as every ConfigError)."""
    (tmp_path / "digit_models.py").write_text(MODELS)
    monkeypatch.chdir(tmp_path)
    grey = ImageClassification((1, 28, 28), 4)
    with pytest.raises(ConfigError) as raised:
        models.check_model("digit_models:ten_classes", grey)
    assert str(raised.value) == (
        "--model: digit_models:ten_classes gives (2, 10) for 2 images, "
        "expected (2, 4): a score per class of the data"
    )
    with pytest.raises(ConfigError, match=r"--model: digit_models:not_a_model made a str"):
        models.check_model("digit_models:not_a_model", grey)
    with pytest.raises(ConfigError, match=r"--model: cnn fails on the data's images \(1x8x8\)"):
        models.check_model("cnn", ImageClassification((1, 8, 8), 4))


def _writers_parquet(folder: Path, writers: dict[str, int]) -> Path:
    """train.parquet and test.parquet of grey digits, the train rows with the `writer`
    who drew each (FEMNIST's layout, in small)."""
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True)
    for split, owners in (
        ("train", [w for w, n in writers.items() for _ in range(n)]),
        ("test", ["test"] * 40),
    ):
        labels = rng.integers(0, 4, len(owners))
        images = [_png(_digit(int(label), rng)) for label in labels]
        table = pa.table({"image": pa.array(images), "label": pa.array(labels), "writer": owners})
        pq.write_table(table, folder / f"{split}.parquet")
    return folder


def test_grey_digits_by_writer_train_with_a_client_per_writer(tmp_path) -> None:
    """Grey 28×28 digits of four classes, in parquet with the writer of each (FEMNIST's
    layout, in small): fedsim's CNN is built for them and learns them, each writer is a
    client, and the inputs are standardised by the training split's pixels, which
    config.json records and the saved model is rebuilt with."""
    from fedsim.front.api import Result
    from fedsim.learning import training

    writers = {"cy": 40, "ann": 120, "bob": 80}  # client ids follow the sorted names
    folder = _writers_parquet(tmp_path / "femnist", writers)
    results = tmp_path / "results"
    options = ["--data", str(folder), "--results-dir", str(results), "--name", "nat"]
    options += ["--partition", "natural", "--partition-column", "writer"]
    options += ["--normalize", "train-split"]
    done = run_cli(*options, "--rounds", "3", "--batch-size", "8", "--lr", "0.05")
    assert done.returncode == 0, done.stderr[-3000:]
    result = Result(results / "nat")
    loaded = load_dataset(str(folder), tmp_path / "cache")
    train = np.asarray(loaded.train_x, dtype=np.float64)
    assert result.document["data_shape"] == {
        "image_shape": [1, 28, 28],
        "classes": 4,
        "pixel_mean": pytest.approx([train.mean()], abs=1e-9),
        "pixel_std": pytest.approx([train.std()], abs=1e-9),
    }
    assert result.config["clients"] == 3  # from the data, not --clients' default 2
    assert result.document["partition_sizes"] == [120, 80, 40]  # ann, bob, cy
    first = result.clients[(result.clients["round"] == 1) & (result.clients.phase == "train")]
    assert sorted(first.client) == [0, 1, 2]
    last = result.rounds.iloc[-1]
    assert last.central_accuracy > 0.5  # chance is 0.25
    test = torch.from_numpy(np.array(loaded.test_x)), torch.from_numpy(np.array(loaded.test_y))
    batch = training.CENTRAL_BATCH_SIZE
    loss, accuracy = training.evaluate(result.model, loaded.task, *test, batch_size=batch)
    assert (loss, accuracy) == (pytest.approx(last.central_loss), last.central_accuracy)
    unstandardised = models.build_model("cnn", task=loaded.task)
    unstandardised.load_state_dict(result.model.state_dict())
    other = training.evaluate(unstandardised, loaded.task, *test, batch_size=batch)[0]
    assert other != pytest.approx(last.central_loss, rel=1e-3)


def test_a_natural_partition_needs_a_column_the_data_has(tmp_path) -> None:
    from fedsim.runner.inputs import load_data
    from fedsim.runner.options import make_config

    folder = _writers_parquet(tmp_path / "femnist", {"ann": 5, "bob": 5})
    with pytest.raises(ConfigError, match=r"--partition: .* names no groups of its own"):
        load_data(make_config(data=str(folder), partition="natural"))
    cfg = make_config(data=str(folder), partition="natural", partition_column="hand")
    with pytest.raises(ConfigError, match="no column 'hand' \\(image, label, writer\\)"):
        load_data(cfg)
    digits = _image_folder(tmp_path / "digits", classes=2, per_class=(2, 1))
    cfg = make_config(data=str(digits), partition="natural", partition_column="writer")
    with pytest.raises(ConfigError, match="no columns besides its images and labels"):
        load_data(cfg)


# --- data never silently dropped, bad data named (issue 40) --------------------------


def test_an_image_folder_reads_images_in_sub_folders_and_says_what_it_leaves_out(
    tmp_path, capsys
) -> None:
    """torchvision's ImageFolder finds a class's images in its sub-folders too; so does
    fedsim, in the same order. A file that is not an image is said, never silently
    dropped; one with an image's suffix that does not decode is refused by name."""
    root = _image_folder(tmp_path / "digits", classes=2, per_class=(2, 1))
    nested = root / "train" / "digit1" / "more" / "deeper"
    nested.mkdir(parents=True)
    rng = np.random.default_rng(5)
    for name in ("b.png", "a.png"):
        (nested / name).write_bytes(_png(_digit(1, rng)))
    (root / "train" / "digit0" / "notes.txt").write_text("not an image")
    (root / "train" / "stray.png").write_bytes(_png(_digit(0, rng)))  # outside a class
    (root / "train" / "digit0" / ".DS_Store").write_bytes(b"\0")  # hidden: neither
    loaded = load_dataset(str(root), tmp_path / "cache")
    assert loaded.train_y.tolist() == [0, 0, 1, 1, 1, 1]
    from torchvision.datasets import ImageFolder

    theirs = ImageFolder(str(root / "train"))
    assert [label for _, label in theirs.samples] == loaded.train_y.tolist()
    first_nested = np.asarray(Image.open(theirs.samples[4][0]))  # more/deeper/a.png
    assert np.array_equal(loaded.train_x[4, 0], first_nested)
    said = capsys.readouterr().out
    assert "2 files of" in said and "train/stray.png" in said and "notes.txt" in said
    (root / "test" / "digit1" / "broken.png").write_bytes(b"no image here")
    with pytest.raises(DataError, match=r"test/digit1/broken.png is not an image fedsim can"):
        load_dataset(str(root), tmp_path / "cache")


def test_a_grey_split_beside_a_colour_one_is_read_as_colour(tmp_path) -> None:
    grey = pa.array([_png(_images(1, seed=i)[0, :, :, 0]) for i in range(4)])
    colour = pa.array([_png(_images(1, seed=i)[0]) for i in range(2)])
    (tmp_path / "d").mkdir()
    for split, column in (("train", grey), ("test", colour)):
        table = pa.table({"image": column, "label": pa.array([0, 1] * (len(column) // 2))})
        pq.write_table(table, tmp_path / "d" / f"{split}.parquet")
    loaded = load_dataset(str(tmp_path / "d"), tmp_path / "cache")
    assert loaded.train_x.shape == (4, 3, 32, 32) and loaded.test_x.shape == (2, 3, 32, 32)
    assert np.array_equal(loaded.train_x[:, 0], loaded.train_x[:, 2])  # grey, three times


@pytest.mark.parametrize(
    ("columns", "metadata", "rows", "message"),
    [
        (("img",), None, 4, "the train split has no label column"),
        (("img",), HF_METADATA, 4, "the train split has no label column"),
        (("img", "label"), HF_METADATA, 0, "the train split has no rows"),
    ],
    ids=["no label column", "metadata names a dropped column", "empty split"],
)
def test_parquet_without_labels_or_rows_is_one_error(
    columns, metadata, rows, message, tmp_path
) -> None:
    _parquet_folder(tmp_path)
    blobs = [{"bytes": _png(image), "path": None} for image in _images(4)]
    table = pa.table({"img": pa.array(blobs), "label": pa.array([0, 1, 2, 3], pa.int64())})
    table = table.select(list(columns)).slice(0, rows).replace_schema_metadata(metadata)
    pq.write_table(table, tmp_path / "plain_text" / "train-00000-of-00001.parquet")
    with pytest.raises(DataError, match=message):
        load_dataset(str(tmp_path), tmp_path / "cache")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ([1.0, float("nan")] * 10, "10 rows of 'who' are NaN: they name no client"),
        (None, "'image' holds binary, not a client's name or number"),
    ],
    ids=["NaN", "the image column"],
)
def test_a_natural_partition_column_must_name_clients(values, message, tmp_path) -> None:
    from fedsim.runner.inputs import load_data
    from fedsim.runner.options import make_config

    folder = _writers_parquet(tmp_path / "femnist", {"ann": 10, "bob": 10})
    column = "image"
    if values is not None:
        table = pq.read_table(folder / "train.parquet").append_column("who", pa.array(values))
        pq.write_table(table, folder / "train.parquet")
        column = "who"
    cfg = make_config(data=str(folder), partition="natural", partition_column=column)
    with pytest.raises(ConfigError, match=message):
        load_data(cfg)


def test_one_class_data_with_the_default_split_is_not_blamed_on_classes_per_client(
    tmp_path,
) -> None:
    from fedsim.runner.inputs import prepare
    from fedsim.runner.options import make_config

    _parquet_folder(tmp_path, train=[3] * 8, test=[3, 3])
    inputs = prepare(make_config(data=str(tmp_path), clients=2))
    assert inputs.partitions.clients == 2
    with pytest.raises(ConfigError, match="--classes-per-client: got 2, but the data has 1"):
        prepare(make_config(data=str(tmp_path), clients=2, partition="pathological"))
