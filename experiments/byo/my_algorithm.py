"""An algorithm of your own for fedsim, written as the built-in ones are
(fedsim/algorithms/): a subclass of fedsim.Algorithm that declares its options and
changes the generic client only where it must.

Damped FedAvg: each client sends its starting weights plus a fraction of its local
update, start + damping · (trained − start), a simple way to slow client drift. With
damping 1 it sends its trained weights, exactly as FedAvg's clients do.

    python simulate.py --strategy my_algorithm:DampedFedAvg --damping 0.5
"""

from flwr.app import ArrayRecord

from fedsim import Bounds, Option
from fedsim.algorithms.context import ClientContext, record_of
from fedsim.algorithms.fedavg import FedAvg
from fedsim.ground import messages


class DampedFedAvg(FedAvg):
    source = "an example of a user's algorithm (experiments/byo)"
    damping = Option(
        1.0, "fraction of its local update a client sends", bounds=Bounds(0, 1, low_open=True)
    )

    def update(self, ctx: ClientContext, model) -> ArrayRecord:
        if self.damping == 1.0:
            return super().update(ctx, model)
        start = ctx.tensors(ctx.content[messages.ARRAYS])
        trained = model.state_dict()
        sent = {  # buffers that are not weights (a BatchNorm's counter) go as trained
            k: start[k] + self.damping * (v - start[k]) if v.is_floating_point() else v
            for k, v in trained.items()
        }
        return record_of(sent)
