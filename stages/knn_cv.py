"""Stage knn_cv: choose k by N-fold cross-validation on the training split.

Reads ``cv.folds``, ``cv.seed``, ``knn.k_values``, ``knn.chunk_mib``,
``features.kind`` (for the figure's title),
``data/features/train_features.npy`` and ``data/prepared/train_labels.npy``.
The test split is not read: no test file is a dependency of this stage, and
none is opened.  Writes

- ``results/knn/cv.json`` (metrics): ``folds``; with ``folds`` > 0 also
  ``best_k`` (highest mean accuracy over the folds, the smallest such k on a
  tie), its ``best_mean_accuracy`` and ``best_std_accuracy``, and
  ``mean_accuracy`` and ``std_accuracy`` (k as a string -> value; std is the
  sample standard deviation over folds);
- ``results/knn/cv.csv``: ``k,mean,std,mean_minus_std,mean_plus_std`` and
  ``fold_1`` .. ``fold_N`` (the accuracy on each fold), one row per k;
- ``results/knn_cv.png``: mean accuracy against k with error bars of one
  standard deviation, the chosen k marked.

With ``cv.folds: 0`` cross-validation is off: ``cv.json`` holds
``{"folds": 0}``, the CSV its header only and the figure says so, and
``knn_sweep`` chooses k on the test split as the tutorial does.
"""

import time
from pathlib import Path

from matplotlib.figure import Figure

from cifar_baselines import cv, knn
from cifar_baselines.atomic import atomic_path, write_csv, write_json
from cifar_baselines.errors import PipelineError
from cifar_baselines.figures import accuracy_against_k
from cifar_baselines.params import load_params
from cifar_baselines.stage import get_logger, progress, run

STAGE = "knn_cv"
KEYS = ["cv.folds", "cv.seed", "knn.k_values", "knn.chunk_mib", "features.kind"]
FEATURES = Path("data/features/train_features.npy")
LABELS = Path("data/prepared/train_labels.npy")
RESULTS = Path("results/knn")
FIGURE = Path("results/knn_cv.png")
COLUMNS = ["k", "mean", "std", "mean_minus_std", "mean_plus_std"]


def _plot(result: cv.KnnCVResult | None, kind: str, n_train: int) -> Figure:
    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    ax = fig.subplots()
    if result is None:
        ax.text(
            0.5,
            0.5,
            "cross-validation off (cv.folds: 0)\nk is chosen on the test split",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
        ax.set_axis_off()
        return fig

    return accuracy_against_k(
        result.k_values,
        result.mean,
        result.best_k,
        chosen_label=f"chosen k = {result.best_k}",
        ylabel="accuracy on the held-out fold",
        title=(
            f"k-NN, {len(result.fold_sizes)}-fold cross-validation, "
            f"features: {kind}\ntraining split only: {n_train:,} images"
        ),
        spread=result.std,
        curve_label="mean ± std over folds",
    )


def main() -> None:
    params = load_params(KEYS)
    folds, seed = params["cv"]["folds"], params["cv"]["seed"]
    k_values = params["knn"]["k_values"]
    kind = params["features"]["kind"]
    log = get_logger(STAGE)

    features = knn.open_npy(FEATURES, ndim=2, kinds="uf")
    labels = knn.open_npy(LABELS, ndim=1, kinds="iu", mmap=False)
    if len(labels) != len(features):
        raise PipelineError(
            f"{LABELS} holds {len(labels)} labels for the {len(features)} rows of "
            f"{FEATURES}"
        )

    if folds == 0:
        log.info("cv.folds is 0: cross-validation off, k is chosen on the test split")
        write_json(RESULTS / "cv.json", {"folds": 0})
        write_csv(RESULTS / "cv.csv", COLUMNS, [])
        with atomic_path(FIGURE) as tmp:
            _plot(None, kind, len(labels)).savefig(tmp, format="png", dpi=120)
        return

    log.info(
        "%d-fold cross-validation of k in %s on %d training rows of %d values",
        folds,
        k_values,
        *features.shape,
    )
    start = time.perf_counter()
    with progress(total=len(labels), desc=STAGE, unit="row") as bar:
        result = cv.knn_cv(
            features,
            labels,
            k_values,
            n_folds=folds,
            seed=seed,
            chunk_mib=params["knn"]["chunk_mib"],
            progress=bar.update,
        )
    best = result.k_values.index(result.best_k)
    log.info(
        "in %.1f s: best k = %d, mean accuracy %.4f ± %.4f over %d folds",
        time.perf_counter() - start,
        result.best_k,
        result.mean[best],
        result.std[best],
        folds,
    )

    ks = [str(k) for k in result.k_values]
    write_json(
        RESULTS / "cv.json",
        {
            "folds": folds,
            "best_k": result.best_k,
            "best_mean_accuracy": float(result.mean[best]),
            "best_std_accuracy": float(result.std[best]),
            "mean_accuracy": dict(zip(ks, map(float, result.mean), strict=True)),
            "std_accuracy": dict(zip(ks, map(float, result.std), strict=True)),
        },
    )
    header = COLUMNS + [f"fold_{f + 1}" for f in range(folds)]
    rows = zip(
        result.k_values,
        result.mean,
        result.std,
        result.mean - result.std,
        result.mean + result.std,
        *result.fold_accuracy,
        strict=True,
    )
    write_csv(RESULTS / "cv.csv", header, ([k, *map(float, r)] for k, *r in rows))
    with atomic_path(FIGURE) as tmp:
        _plot(result, kind, len(labels)).savefig(tmp, format="png", dpi=120)
    log.info("wrote %s, %s, %s", RESULTS / "cv.json", RESULTS / "cv.csv", FIGURE)


if __name__ == "__main__":
    run(STAGE, main)
