"""Stage mlp_cv: choose the MLP's width and learning rate by N-fold cross-validation.

Reads the ``cv`` section, ``features.kind`` and every ``mlp`` key except
``mlp.hidden_units`` and ``mlp.learning_rate`` (the grid replaces them), with
``data/features/train_features.npy`` and ``data/prepared/train_labels.npy``.
The test split is not read: no test file is a dependency of this stage, and
none is opened.  Writes ``results/mlp/cv.json`` (metrics), which ``mlp_train``
reads:

- with ``cv.mlp: true``: ``cross_validated: true``, ``folds``, ``best`` (the
  chosen ``hidden_units`` and ``learning_rate``: highest mean accuracy over the
  folds, the first in grid order on a tie), ``best_mean_accuracy``,
  ``best_std_accuracy`` and ``grid``, one entry per grid point (hidden units
  varying slowest) with its ``mean``, ``std`` and per-fold accuracies.  Each
  fold's network is trained on the other folds exactly as ``mlp_train`` trains
  on the whole training split (its own validation hold-out included) and
  scored on the fold.  A grid point whose training diverges is not trained on
  the remaining folds and cannot be chosen: its ``mean`` is null and
  ``failed`` says where and why;
- with ``cv.mlp: false``: ``{"cross_validated": false}`` only (the same bytes
  whatever the other keys, so ``mlp_train`` does not re-run for nothing), and
  ``mlp_train`` uses ``mlp.hidden_units`` and ``mlp.learning_rate``.
"""

import cifar_baselines.blas_threads  # noqa: F401  (sets OpenBLAS up; before numpy)

# isort: split

import time
from pathlib import Path

from cifar_baselines import cv, mlp
from cifar_baselines.atomic import write_json
from cifar_baselines.errors import PipelineError
from cifar_baselines.params import PARAMS_FILE, check_mlp_inputs, load_params
from cifar_baselines.stage import get_logger, progress, run

STAGE = "mlp_cv"
KEYS = [
    "cv.folds",
    "cv.seed",
    "cv.mlp",
    "cv.mlp_hidden_units",
    "cv.mlp_learning_rates",
    "features.kind",
    "mlp.activation",
    "mlp.init",
    "mlp.scaling",
    "mlp.pca_components",
    "mlp.batch_size",
    "mlp.epochs",
    "mlp.momentum",
    "mlp.schedule",
    "mlp.weight_decay",
    "mlp.flip",
    "mlp.validation_fraction",
    "mlp.seed",
]
FEATURES = Path("data/features/train_features.npy")
LABELS = Path("data/prepared/train_labels.npy")
OUT = Path("results/mlp/cv.json")


def main() -> None:
    params = load_params(KEYS)
    options, settings = params["cv"], params["mlp"]
    kind = params["features"]["kind"]
    log = get_logger(STAGE)

    if not options["mlp"]:
        log.info("cv.mlp is false: mlp_train uses mlp.hidden_units, mlp.learning_rate")
        write_json(OUT, {"cross_validated": False})
        return
    if options["folds"] == 0:
        raise PipelineError(
            f"{PARAMS_FILE}: 'cv.mlp' is true but 'cv.folds' is 0; set cv.folds to "
            "2 or more, or cv.mlp to false"
        )
    features, labels = mlp.load_inputs(FEATURES, LABELS)
    check_mlp_inputs(settings, kind, features.shape[1], FEATURES)
    grid = {
        "hidden_units": options["mlp_hidden_units"],
        "learning_rate": options["mlp_learning_rates"],
    }
    n_points = len(grid["hidden_units"]) * len(grid["learning_rate"])
    log.info(
        "%d-fold cross-validation of hidden_units %s x learning_rate %s on %d "
        "training rows of %d values (features: %s): %d trainings",
        options["folds"],
        grid["hidden_units"],
        grid["learning_rate"],
        *features.shape,
        kind,
        options["folds"] * n_points,
    )

    def fit_and_score(x_fit, y_fit, x_val, y_val, *, hidden_units, learning_rate):
        # The mlp keys are named as the arguments of fit_mlp.
        model, _ = mlp.fit_mlp(
            x_fit,
            y_fit,
            hidden_units=hidden_units,
            learning_rate=learning_rate,
            **settings,
        )
        return model.accuracy(x_val, y_val)

    start = time.perf_counter()
    with progress(total=options["folds"] * n_points, desc=STAGE, unit="fit") as bar:
        result = cv.mlp_cv(
            features,
            labels,
            grid,
            n_folds=options["folds"],
            seed=options["seed"],
            train_fn=fit_and_score,
            skip_errors=(mlp.TrainingDivergedError,),
            progress=bar.update,
        )
    for point, failure in zip(result.points, result.failures, strict=True):
        if failure is not None:
            log.warning("%s not chosen: %s", point, failure)
    log.info(
        "in %.1f s: chose %s, mean accuracy %.4f ± %.4f over %d folds",
        time.perf_counter() - start,
        result.best_point,
        result.mean[result.best_index],
        result.std[result.best_index],
        options["folds"],
    )

    report = result.to_dict()
    write_json(
        OUT,
        {
            "cross_validated": True,
            "folds": report.pop("folds"),
            "best": report.pop("best"),
            "best_mean_accuracy": report.pop("best_mean_accuracy"),
            "best_std_accuracy": float(result.std[result.best_index]),
            **report,
        },
    )
    log.info("wrote %s", OUT)


if __name__ == "__main__":
    run(STAGE, main)
