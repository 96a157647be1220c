"""CIFAR-10 baselines: k-nearest neighbours and a numpy perceptron, run by DVC."""

__version__ = "0.1.0"
