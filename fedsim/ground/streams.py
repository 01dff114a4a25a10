"""Every random stream of a run, named once: the heart of "same seed, same numbers".

Each stream is a function of the run's seed and of what it is for (a round, a client, a
purpose), never of the order in which things happen, how clients are bundled or which
process runs them. A new use of randomness gets a stream of its own here.

Run-wide draws, seeded by (seed, stream) (numpy):
- MALICIOUS: which clients are malicious (--byzantine-fraction);
- PROFILES: the lognormal device profiles (--profiles lognormal);
- HOLDOUT: which clients never train (a personal algorithm's --holdout-clients).

Sampling, seeded by (seed, draw, stream) (numpy); `draw` is the round, or FedBuff's
count of draws so far:
- TRAINING_SAMPLE, EVALUATION_SAMPLE: who trains and who evaluates in a round;
- FEDBUFF_SAMPLE: whom FedBuff starts when a place frees up.

A client's own streams, seeded by (seed, round, client, stream) through client_seed:
- LOCAL_TRAINING: its batch order and augmentation (its torch.Generator);
- DROPOUT: whether it drops out (--client-failure-rate);
- ATTACK_NOISE: the gaussian attack's noise;
- ADAPTATION: a personal algorithm's adaptation before the client is judged (its
  fine-tuning's batch order: fedsim.algorithms.personal);
- PERSONAL_TRAINING: the batch order of a client's personal copy (Ditto's).

The partitions, seeded by the seed (partition_order, the rows' order; flwr-datasets'
partitioners get the seed itself) and by (seed, client) (client_rows_rng, which rows a
client holds out).

Seeded by the run's seed where a library draws from its global generator: the initial
model (torch's, seed_model_init) and Flower's DP noise (NumPy's, seed_dp_noise).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

MALICIOUS = 0x41545441434B
PROFILES = 0x70726F66
HOLDOUT = 0x686F6C64

TRAINING_SAMPLE = 0
EVALUATION_SAMPLE = 1
FEDBUFF_SAMPLE = 2

LOCAL_TRAINING = 0
DROPOUT = 1
ATTACK_NOISE = 2
ADAPTATION = 3
PERSONAL_TRAINING = 4


def run_rng(seed: int, stream: int) -> np.random.Generator:
    """A run-wide stream (MALICIOUS, PROFILES)."""
    return np.random.default_rng([seed, stream])


def held_out(seed: int, clients: int, fraction: float) -> list[int]:
    """The clients kept out of training: ⌈fraction · clients⌉ of them (one at least
    stays in), drawn from the run's seed alone; sorted."""
    count = min(math.ceil(fraction * clients), clients - 1) if fraction else 0
    chosen = run_rng(seed, HOLDOUT).choice(clients, size=count, replace=False)
    return sorted(int(pid) for pid in chosen)


def sample(seed: int, draw: int, candidates: Sequence[int], count: int, stream: int) -> list[int]:
    """`count` of `candidates` (all of them if there are no more), drawn by a generator
    seeded by (seed, draw, stream) alone; sorted."""
    if count >= len(candidates):
        return list(candidates)
    rng = np.random.default_rng([seed, draw, stream])
    return sorted(candidates[i] for i in rng.choice(len(candidates), size=count, replace=False))


def client_seed(seed: int, server_round: int, pid: int, stream: int) -> int:
    """Independent, reproducible seeds per (run seed, round, client, purpose)."""
    return int(np.random.default_rng([seed, server_round, pid, stream]).integers(2**62))


def client_rng(seed: int, server_round: int, pid: int, stream: int) -> np.random.Generator:
    """A client's numpy stream (DROPOUT)."""
    return np.random.default_rng(client_seed(seed, server_round, pid, stream))


def partition_order(seed: int, rows: int) -> np.ndarray:
    """The order the training rows are dealt to clients in (fedsim.learning.partition)."""
    return np.random.default_rng(seed).permutation(rows)


def client_rows_rng(seed: int, pid: int) -> np.random.Generator:
    """Shuffles a client's rows before its held-out share is cut off."""
    return np.random.default_rng([seed, pid])


def seed_model_init(seed: int) -> None:
    """The initial model's weights come from torch's global generator."""
    import torch

    torch.manual_seed(seed)


def seed_dp_noise(seed: int) -> None:
    """Flower's DP wrappers draw their noise from NumPy's global generator."""
    np.random.seed(seed)
