"""Stage prepare: read the CIFAR-10 batches and split them into train and test.

Reads ``split.train_fraction``, ``split.seed``, ``split.stratify`` and
``data/raw/cifar-10-batches-py/``; writes ``data/prepared/`` with
``{train,test}_images.npy`` (uint8, (n, 3072)) and ``{train,test}_labels.npy``
(int64, (n,)), ready to be memory-mapped by later stages.
"""

from pathlib import Path

import numpy as np

from cifar_baselines import read_cifar
from cifar_baselines.atomic import atomic_path
from cifar_baselines.params import load_params
from cifar_baselines.stage import get_logger, progress, run

STAGE = "prepare"
KEYS = ["split.train_fraction", "split.seed", "split.stratify"]
RAW = Path("data/raw/cifar-10-batches-py")
OUT = Path("data/prepared")


def main() -> None:
    params = load_params(KEYS)["split"]
    log = get_logger(STAGE)

    with progress(total=len(read_cifar.BATCH_NAMES), desc="read", unit="batch") as bar:
        data, labels = read_cifar.read_cifar_uint8(RAW, on_batch=lambda _: bar.update())
    log.info("read %d images of %d values from %s", *data.shape, RAW)

    train_idx, test_idx = read_cifar.split_indices(
        labels,
        train_fraction=params["train_fraction"],
        seed=params["seed"],
        stratify=params["stratify"],
    )

    with atomic_path(OUT, directory=True) as tmp:
        for part, rows in (("train", train_idx), ("test", test_idx)):
            read_cifar.save_rows(tmp / f"{part}_images.npy", data, rows)
            np.save(tmp / f"{part}_labels.npy", labels[rows], allow_pickle=False)
            counts = np.bincount(labels[rows], minlength=len(read_cifar.CLASS_NAMES))
            log.info(
                "%-5s %6d images, per class %s",
                part,
                len(rows),
                " ".join(str(c) for c in counts),
            )


if __name__ == "__main__":
    run(STAGE, main)
