"""Stage mlp_test: score the trained perceptron on the test split.

Reads ``data/mlp/model.npz`` (which carries the input scaling and the
activation, so no params key is read), ``data/features/{test,train}_features.npy``
(what the model was trained on) and ``data/prepared/{test,train}_labels.npy``;
writes

- ``results/mlp/metrics.json``: ``test_accuracy``, ``test_loss`` (mean
  cross-entropy), ``train_accuracy`` and ``val_accuracy`` (the training part
  and the validation part of the training split, unflipped images),
  ``best_epoch`` (the epoch whose weights were kept) and ``per_class_accuracy``
  (class name -> test accuracy on that class);
- ``results/mlp/confusion.csv``: ``actual,predicted`` class names, one row per
  test image.
"""

from pathlib import Path

import numpy as np

from cifar_baselines import mlp
from cifar_baselines.atomic import write_csv, write_json
from cifar_baselines.errors import PipelineError
from cifar_baselines.read_cifar import CLASS_NAMES
from cifar_baselines.stage import get_logger, run

STAGE = "mlp_test"
KEYS: list[str] = []
FEATURES = Path("data/features")
PREPARED = Path("data/prepared")
MODEL = Path("data/mlp/model.npz")
RESULTS = Path("results/mlp")


def main() -> None:
    log = get_logger(STAGE)

    model = mlp.MLPModel.load(MODEL)
    test_images, test_labels = mlp.load_inputs(
        FEATURES / "test_features.npy", PREPARED / "test_labels.npy"
    )
    train_images, train_labels = mlp.load_inputs(
        FEATURES / "train_features.npy", PREPARED / "train_labels.npy"
    )
    if test_images.shape[1] != model.w1.shape[0]:
        raise PipelineError(
            f"{FEATURES / 'test_features.npy'} has {test_images.shape[1]} values "
            f"per image but {MODEL} expects {model.w1.shape[0]}"
        )
    val_rows = model.validation_rows
    if len(val_rows) and val_rows.max() >= len(train_images):
        raise PipelineError(
            f"{MODEL} holds out row {val_rows.max()} of the training split, which "
            f"has {len(train_images)} rows: was it trained on another split?"
        )
    train_rows = np.setdiff1d(np.arange(len(train_images)), val_rows)

    probabilities = model.predict_proba(test_images)
    predicted = probabilities.argmax(axis=1)
    per_class = mlp.per_class_accuracy(test_labels, predicted)
    metrics = {
        "test_accuracy": float(np.mean(predicted == test_labels)),
        "test_loss": mlp.cross_entropy_loss(probabilities, test_labels),
        "train_accuracy": model.accuracy(
            train_images[train_rows], train_labels[train_rows]
        ),
        "val_accuracy": model.accuracy(train_images[val_rows], train_labels[val_rows]),
        "best_epoch": model.best_epoch,
        "per_class_accuracy": {
            name: None if np.isnan(a) else float(a)
            for name, a in zip(CLASS_NAMES, per_class, strict=True)
        },
    }
    log.info(
        "%d test images: accuracy %.4f, loss %.4f; training part accuracy %.4f",
        len(test_images),
        metrics["test_accuracy"],
        metrics["test_loss"],
        metrics["train_accuracy"],
    )

    write_json(RESULTS / "metrics.json", metrics)
    names = np.asarray(CLASS_NAMES)
    write_csv(
        RESULTS / "confusion.csv",
        ["actual", "predicted"],
        zip(names[test_labels], names[predicted], strict=True),
    )
    log.info("wrote %s, %s", RESULTS / "metrics.json", RESULTS / "confusion.csv")


if __name__ == "__main__":
    run(STAGE, main)
