"""Read the CIFAR-10 python batches and split them into train and test sets."""

from __future__ import annotations

# The ten CIFAR-10 classes, indexed by label (the order of ``batches.meta``).
CLASS_NAMES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
