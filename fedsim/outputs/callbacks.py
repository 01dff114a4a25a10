"""What a run's outputs are to the round loop: callbacks (pfl-research's pattern).

The loop calls `on_round_end(record, arrays)` after every round and `on_run_end(arrays)`
once the rounds are over, on every callback, in order, and knows nothing about files;
the outputs know nothing about each other. A new output is a subclass that overrides
what it needs (fedsim.outputs.files, .console, .tracking; the checkpoint is one too).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flwr.app import ArrayRecord

    from fedsim.outputs.records import RoundRecord


class RoundCallback:
    """An output of a run; both methods do nothing unless overridden."""

    def on_round_end(self, record: RoundRecord, arrays: ArrayRecord) -> None:
        """A round is over: `record` is its rounds.csv row (with its clients' rows),
        `arrays` the global model after it (round 0: the initial model)."""

    def on_run_end(self, arrays: ArrayRecord) -> None:
        """Every round is done; `arrays` is the final model."""
