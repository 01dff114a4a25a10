"""FedAvg + fine-tuning (FedAvg-FT): FedAvg's training; before it is judged, a client
fine-tunes the global model on its own training split (Collins et al., ICML 2021,
Table 1: FedAvg + FT; FL-bench's fine-tune-then-test). It keeps nothing between rounds."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedsim.algorithms.context import ClientContext
from fedsim.algorithms.personal import Personal
from fedsim.ground.option import Option, at_least

if TYPE_CHECKING:
    from torch import nn


class FedAvgFT(Personal):
    source = "Collins et al., ICML 2021 (FedAvg + FT)"
    finetune_epochs = Option(
        1, "epochs a client fine-tunes the global model before it is judged", at_least(1)
    )

    def adapt(self, ctx: ClientContext, model: nn.Module) -> None:
        self.fine_tune(ctx, model, self.for_epochs(self.finetune_epochs))
