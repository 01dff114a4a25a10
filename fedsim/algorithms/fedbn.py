"""FedBN (Li et al., ICLR 2021): FedAvg in which each client keeps its own BatchNorm
layers (their weights and running statistics), so that clients whose features differ
(another scanner, another camera) normalise them their own way. It needs a model with
BatchNorm (`--model cnn-bn`, `resnet18`, or a user's)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedsim.algorithms.personal import Personal
from fedsim.ground.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn


class FedBN(Personal):
    source = "Li et al., ICLR 2021"

    def own(self, model: nn.Module) -> list[str]:
        from torch import nn

        norms = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
        return [
            f"{name}.{key}"
            for name, module in model.named_modules()
            if isinstance(module, norms)
            for key in module.state_dict()
        ]

    def check_model(self, model: nn.Module) -> None:
        if not self.own(model):
            raise ConfigError(
                "--model",
                f"{self.cfg.model} has no BatchNorm layer for fedbn to keep per client "
                "(--model cnn-bn or resnet18 have)",
            )
