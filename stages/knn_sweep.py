"""Stage knn_sweep: k-nearest-neighbour test accuracy for every k of ``knn.k_values``.

Reads ``knn.k_values``, ``features.kind`` (for the figure's title), the
memory-mapped ``data/knn/distances.npy``,
``data/prepared/{train,test}_labels.npy`` and ``results/knn/cv.json`` (the
choice of stage ``knn_cv``); writes

- ``results/knn/metrics.json``: ``best_k``, the k chosen; ``best_k_source``,
  how: ``"cv"`` when ``knn_cv`` chose it on folds of the training split
  (``cv.folds`` > 0), ``"test"`` when it is the k of highest test accuracy
  (``cv.folds: 0``, the tutorial's rule, which flatters the method slightly:
  it is the best of many looks at the test split); ``best_accuracy``, the
  test accuracy of that k; and ``accuracy`` (k as a string -> test accuracy,
  the tutorial's curve).  On a tie the smaller k is chosen, by either rule;
- ``results/knn/accuracy.csv``: ``k,accuracy``, one row per k;
- ``results/knn/confusion.csv``: ``actual,predicted`` class names, one row per
  test image, for the chosen k;
- ``results/knn.png``: test accuracy against k, the chosen k marked.
"""

import json
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from cifar_baselines import knn
from cifar_baselines.atomic import atomic_path, write_csv, write_json
from cifar_baselines.errors import PipelineError
from cifar_baselines.figures import accuracy_against_k
from cifar_baselines.params import PARAMS_FILE, load_params
from cifar_baselines.read_cifar import CLASS_NAMES
from cifar_baselines.stage import get_logger, progress, run

STAGE = "knn_sweep"
KEYS = ["knn.k_values", "features.kind"]
DISTANCES = Path("data/knn/distances.npy")
CV = Path("results/knn/cv.json")
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


def _cv_choice(k_values: list[int]) -> tuple[int, int] | None:
    """The k chosen by ``knn_cv`` and its number of folds; None when CV is off."""
    try:
        report = json.loads(CV.read_text(encoding="utf-8"))
        folds = report["folds"]
        if not folds:
            return None
        best_k, scored = report["best_k"], sorted(map(int, report["mean_accuracy"]))
    except OSError as exc:
        raise PipelineError(f"{CV}: cannot read: {exc.strerror or exc}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise PipelineError(f"{CV}: not a report of stage knn_cv ({exc!r})") from None
    if scored != sorted(k_values) or best_k not in k_values:
        raise PipelineError(
            f"{CV} scored k = {scored} but {PARAMS_FILE} lists 'knn.k_values' "
            f"{k_values}: run stage knn_cv again (dvc repro)"
        )
    return best_k, folds


def _plot(
    result: knn.SweepResult,
    chosen_k: int,
    how: str,
    kind: str,
    n_test: int,
    n_train: int,
) -> Figure:
    return accuracy_against_k(
        result.k_values,
        result.accuracy,
        chosen_k,
        chosen_label=f"k = {chosen_k}, {how}",
        ylabel="test accuracy",
        title=(
            f"k-NN on CIFAR-10, L2 distance, features: {kind}\n"
            f"test split: {n_test:,} images; training split: {n_train:,} images"
        ),
    )


def main() -> None:
    params = load_params(KEYS)
    k_values = params["knn"]["k_values"]
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

    choice = _cv_choice(k_values)

    with progress(total=n_test, desc=STAGE, unit="row") as bar:
        result = knn.sweep_k(
            dists, labels_train, labels_test, k_values, on_chunk=bar.update
        )
    if choice is None:
        chosen_k, source, how = result.best_k, "test", "best on the test split"
    else:
        chosen_k, source = choice[0], "cv"
        how = f"chosen by {choice[1]}-fold CV on the training split"
    if chosen_k == result.best_k:
        predictions = result.best_predictions
    else:  # one more pass over the distances, for this k alone
        predictions = knn.knn_predict(dists, labels_train, chosen_k)
    accuracy = float(result.accuracy[result.k_values.index(chosen_k)])
    log.info(
        "%d values of k in %d..%d on %d test x %d training images: "
        "k = %d (%s), test accuracy %.4f; best k on the test split %d (%.4f)",
        len(result.k_values),
        result.k_values[0],
        result.k_values[-1],
        n_test,
        n_train,
        chosen_k,
        how,
        accuracy,
        result.best_k,
        result.best_accuracy,
    )

    per_k = list(zip(result.k_values, map(float, result.accuracy), strict=True))
    write_json(
        RESULTS / "metrics.json",
        {
            "best_k": chosen_k,
            "best_k_source": source,
            "best_accuracy": accuracy,
            "accuracy": {str(k): a for k, a in per_k},
        },
    )
    write_csv(RESULTS / "accuracy.csv", ["k", "accuracy"], per_k)
    names = np.asarray(CLASS_NAMES)
    write_csv(
        RESULTS / "confusion.csv",
        ["actual", "predicted"],
        zip(names[labels_test], names[predictions], strict=True),
    )
    figure = _plot(result, chosen_k, how, params["features"]["kind"], n_test, n_train)
    with atomic_path(FIGURE) as tmp:
        figure.savefig(tmp, format="png", dpi=120)
    log.info("wrote %s, %s", RESULTS, FIGURE)


if __name__ == "__main__":
    run(STAGE, main)
