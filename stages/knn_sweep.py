"""Stage knn_sweep: k-nearest-neighbour accuracy for every k of ``knn.k_values``.

Reads ``knn.k_values``, the memory-mapped ``data/knn/distances.npy`` and
``data/prepared/{train,test}_labels.npy``; writes

- ``results/knn/metrics.json``: ``best_k``, ``best_accuracy`` and ``accuracy``
  (k as a string -> accuracy); the best k is the smallest of equal accuracies;
- ``results/knn/accuracy.csv``: ``k,accuracy``, one row per k;
- ``results/knn/confusion.csv``: ``actual,predicted`` class names, one row per
  test image, for the best k;
- ``results/knn.png``: accuracy against k, the best k marked.
"""

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter

from cifar_baselines import knn
from cifar_baselines.atomic import atomic_path, write_csv, write_json
from cifar_baselines.errors import PipelineError
from cifar_baselines.params import PARAMS_FILE, load_params
from cifar_baselines.read_cifar import CLASS_NAMES
from cifar_baselines.stage import get_logger, progress, run

STAGE = "knn_sweep"
KEYS = ["knn.k_values"]
DISTANCES = Path("data/knn/distances.npy")
PREPARED = Path("data/prepared")
RESULTS = Path("results/knn")
FIGURE = Path("results/knn.png")


def _labels(path: Path, n: int, counted: str) -> np.ndarray:
    """Read one labels file and check it has ``n`` class indices in range."""
    labels = knn.open_npy(path, ndim=1, kinds="iu", mmap=False)
    if len(labels) != n:
        raise PipelineError(
            f"{path} holds {len(labels)} labels; expected {n}, the {counted} of "
            f"{DISTANCES}"
        )
    if labels.min() < 0 or labels.max() >= len(CLASS_NAMES):
        raise PipelineError(
            f"{path}: labels must be in 0..{len(CLASS_NAMES) - 1}, found "
            f"{labels.min()}..{labels.max()}"
        )
    return labels


def _plot(result: knn.SweepResult, n_test: int, n_train: int) -> Figure:
    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    ax = fig.subplots()
    ax.plot(result.k_values, result.accuracy, marker="o", markersize=4)
    ax.plot(
        [result.best_k],
        [result.best_accuracy],
        marker="*",
        markersize=14,
        linestyle="none",
        color="tab:red",
        label=f"best k = {result.best_k} ({result.best_accuracy:.2%})",
    )
    ax.set_xlabel("k (number of neighbours)")
    ax.set_ylabel("test accuracy")
    ax.set_title(
        "k-NN on CIFAR-10 pixels, L2 distance\n"
        f"test split: {n_test:,} images; training split: {n_train:,} images",
        fontsize="medium",
    )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=1))
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def main() -> None:
    k_values = load_params(KEYS)["knn"]["k_values"]
    log = get_logger(STAGE)

    dists = knn.open_npy(DISTANCES, ndim=2, kinds="f")
    n_test, n_train = dists.shape
    labels_train = _labels(PREPARED / "train_labels.npy", n_train, "columns")
    labels_test = _labels(PREPARED / "test_labels.npy", n_test, "rows")
    if max(k_values) > n_train:
        raise PipelineError(
            f"{PARAMS_FILE}: 'knn.k_values' holds k = {max(k_values)}, more than "
            f"the {n_train} training images"
        )

    with progress(total=n_test, desc=STAGE, unit="row") as bar:
        result = knn.sweep_k(
            dists, labels_train, labels_test, k_values, on_chunk=bar.update
        )
    log.info(
        "%d values of k in %d..%d on %d test x %d training images: "
        "best k = %d, accuracy %.4f",
        len(result.k_values),
        result.k_values[0],
        result.k_values[-1],
        n_test,
        n_train,
        result.best_k,
        result.best_accuracy,
    )

    per_k = list(zip(result.k_values, map(float, result.accuracy), strict=True))
    write_json(
        RESULTS / "metrics.json",
        {
            "best_k": result.best_k,
            "best_accuracy": result.best_accuracy,
            "accuracy": {str(k): a for k, a in per_k},
        },
    )
    write_csv(RESULTS / "accuracy.csv", ["k", "accuracy"], per_k)
    names = np.asarray(CLASS_NAMES)
    write_csv(
        RESULTS / "confusion.csv",
        ["actual", "predicted"],
        zip(names[labels_test], names[result.best_predictions], strict=True),
    )
    with atomic_path(FIGURE) as tmp:
        _plot(result, n_test, n_train).savefig(tmp, format="png", dpi=120)
    log.info("wrote %s, %s", RESULTS, FIGURE)


if __name__ == "__main__":
    run(STAGE, main)
