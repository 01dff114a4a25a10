"""LG-FedAvg (Liang et al., 2020): each client keeps its own body (local
representation) and shares the head (the model's last layer), which is averaged."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedsim.algorithms.personal import Personal

if TYPE_CHECKING:
    from torch import nn


class LGFedAvg(Personal):
    source = "Liang et al., arXiv 2001.01523, 2020"

    def own(self, model: nn.Module) -> list[str]:
        from fedsim.learning import models

        shared = set(models.head(model))
        return [name for name in model.state_dict() if name not in shared]
