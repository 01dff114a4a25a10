"""Central test accuracy per class of a run's final model, beside how many clients hold
each class: where a label-skewed partition (#C=k, Dirichlet) loses its accuracy.

    python experiments/per_class_accuracy.py results/niid_bench_cifar10/<run> [...]

Reads each run's config.json (data and model), model.pt and label_counts.csv (an
experiment writes it beside each run); the overall figure is the run's last
central_accuracy, in percent.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fedsim.ground.files import CONFIG_JSON, LABEL_COUNTS_CSV, MODEL, cache_root
from fedsim.learning import models, tasks, training
from fedsim.learning.data import load_dataset


def per_class(run: Path) -> tuple[float, pd.DataFrame]:
    """Overall accuracy (%) and a frame with rows `holders` (clients holding the class)
    and `accuracy` (%), a column per class."""
    document = json.loads((run / CONFIG_JSON).read_text())
    cfg = document["config"]
    data = load_dataset(cfg["data"], cache_root())
    task = tasks.described(document.get("data_shape"))
    model = models.build_model(cfg["model"], task=task)
    model.load_state_dict(torch.load(run / MODEL))
    images = torch.from_numpy(np.array(data.test_x))
    labels = torch.from_numpy(np.array(data.test_y))
    # the central evaluation's own function and batch size
    # (fedsim.learning.training.CentralEvaluator),
    # once over the test split and once per class
    batch = training.CENTRAL_BATCH_SIZE
    _, overall = training.evaluate(model, task, images, labels, batch_size=batch)
    accuracy = [
        100 * training.evaluate(model, task, images[of], labels[of], batch_size=batch)[1]
        for of in (labels == k for k in range(len(data.classes)))
    ]
    holders = (pd.read_csv(run / LABEL_COUNTS_CSV, index_col="client") > 0).sum()
    frame = pd.DataFrame(
        {"holders": holders.to_numpy(), "accuracy": accuracy}, index=list(data.classes)
    ).T
    return 100 * overall, frame


def main(runs: list[str]) -> None:
    for run in runs:
        overall, frame = per_class(Path(run))
        print(f"{run}: central accuracy {overall:.2f} %")
        table = frame.round(1).astype(object)
        table.loc["holders"] = frame.loc["holders"].astype(int)
        print(table.to_string(), end="\n\n")


if __name__ == "__main__":
    main(sys.argv[1:])
