"""fedsim: federated-learning simulation on CIFAR-10 through Flower's Ray engine."""

__version__ = "0.1.0"
