"""Local training alone (the "Local" column of personalisation tables): each client
trains only on its own data, its whole model its own, and is judged by it. The
server's average of the clients' models is reported centrally, as for any algorithm,
but no client ever starts from it after its first round."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedsim.algorithms.personal import Personal

if TYPE_CHECKING:
    from torch import nn


class Local(Personal):
    source = "the no-federation baseline (Collins et al., ICML 2021, Table 1: Local Only)"

    def own(self, model: nn.Module) -> list[str]:
        return list(model.state_dict())
