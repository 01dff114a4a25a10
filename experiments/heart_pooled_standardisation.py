"""Why fedsim's pooled Fed-Heart-Disease baseline is below FLamby's: FLamby standardises
the pooled model's training rows by all centres' training rows together, then tests it
on each centre's rows standardised by that centre's own (flamby/datasets/
fed_heart_disease/dataset.py, `pooled=True` against the per-centre test loaders); fedsim
trains on each centre's own standardisation, as the federated runs do. Both, here, in
the benchmark's setting (logistic regression, Adam lr 0.001, batch 4, 50 epochs), over
FLamby's five seeds; the score is the mean over centres of their test accuracy.

    python experiments/heart_pooled_standardisation.py ../shared/data/heart_disease
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from fedsim.ground import streams
from fedsim.learning import models, training
from fedsim.learning.data.tables import heart_disease_files, read_heart_disease
from fedsim.learning.tasks import TableClassification

SETTINGS = training.TrainSettings(epochs=50, batch_size=4, lr=0.001, momentum=0.0, adam=True)
SEEDS = (42, 43, 44, 45, 46)


def score(train: dict[str, np.ndarray], test: dict[str, np.ndarray], seed: int) -> float:
    task = TableClassification(features=13, classes=2)
    model = models.build_model("logreg", seed=seed, task=task)
    generator = torch.Generator().manual_seed(
        streams.client_seed(seed, 1, 0, streams.LOCAL_TRAINING)
    )
    x, y = (torch.from_numpy(train[name]) for name in ("train_x", "train_y"))
    training.train(model, task, x, y, SETTINGS, generator)
    accuracies = []
    for centre in range(4):
        rows = test["test_groups"] == centre
        examples, labels = (torch.from_numpy(test[name][rows]) for name in ("test_x", "test_y"))
        accuracies.append(training.evaluate(model, task, examples, labels)[1])
    return float(np.mean(accuracies))


def main(folder: str) -> None:
    files = heart_disease_files(Path(folder))
    by_centre, _, _ = read_heart_disease(files)
    pooled, _, _ = read_heart_disease(files, pooled=True)
    for name, train in (
        ("each centre's standardisation (fedsim)", by_centre),
        ("all centres' standardisation (FLamby's pooled)", pooled),
    ):
        scores = [score(train, by_centre, seed) for seed in SEEDS]
        print(f"{name}: {np.mean(scores):.3f} ± {np.std(scores, ddof=1):.3f}")


if __name__ == "__main__":
    main(sys.argv[1])
