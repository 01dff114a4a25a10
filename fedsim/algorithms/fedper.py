"""FedPer (Arivazhagan et al., 2019): each client keeps its own head (the model's last
layer) and trains it with the shared body; the body is averaged."""

from __future__ import annotations

from fedsim.algorithms.personal import OwnHead


class FedPer(OwnHead):
    source = "Arivazhagan et al., arXiv 1912.00818, 2019"
