"""Who takes part: a round's clients, drawn by partition id from the run's seed.

Flower samples random node ids with the global `random`; fedsim samples partition ids
with generators seeded by (seed, round, stream) alone (fedsim.ground.streams), so the
same seed gives the same clients whatever the engine, the bundling or a resume.
"""

from __future__ import annotations

import math

from fedsim.ground import streams
from fedsim.ground.config import RunConfig, sample_count


def sample_clients(
    seed: int, server_round: int, clients: int, fraction: float, stream: int
) -> list[int]:
    """Which partitions take part: depends on the seed, round and fraction alone."""
    count = sample_count(clients, fraction)
    return streams.sample(seed, server_round, range(clients), count, stream)


def sample_size(cfg: RunConfig, wanted: int) -> int:
    """Clients to sample for `wanted` updates: ⌈F·k⌉ with --over-select F."""
    return math.ceil(cfg.over_select * wanted) if cfg.over_select else wanted
