"""Stage mlp_train: train the one-hidden-layer perceptron on the training split.

Reads every key of the ``mlp`` section, ``features.kind``,
``data/features/train_features.npy`` (the pixels or descriptors the
``features`` stage wrote), ``data/prepared/train_labels.npy`` and
``results/mlp/cv.json``: when stage ``mlp_cv`` cross-validated a grid
(``cv.mlp: true``), the ``hidden_units`` and ``learning_rate`` it chose replace
``mlp.hidden_units`` and ``mlp.learning_rate``.  ``mlp.flip`` needs
``features.kind: raw`` (a descriptor row cannot be mirrored).
``mlp.validation_fraction`` of the training split is held out (seeded by
``mlp.seed``) for the learning curves and to choose the epoch whose weights are
kept; the test split is not read.  Writes

- ``data/mlp/model.npz``: the weights of the epoch of best validation accuracy
  (a PCA projection folded into ``w1``), the hidden activation, the input
  scaling fitted on the training part (``shift``, ``scale``), the validation
  rows and that epoch;
- ``results/mlp/history.csv``: ``epoch,train_loss,train_accuracy,val_loss,
  val_accuracy``, one row per epoch;
- ``results/mlp.png``: accuracy and loss per epoch, training and validation.
"""

import cifar_baselines.blas_threads  # noqa: F401  (sets OpenBLAS up; before numpy)

# isort: split

import json
import textwrap
import time
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter

from cifar_baselines import mlp
from cifar_baselines.atomic import atomic_path, write_csv
from cifar_baselines.errors import PipelineError
from cifar_baselines.params import check_mlp_inputs, load_params
from cifar_baselines.stage import get_logger, progress, run

STAGE = "mlp_train"
KEYS = [
    "mlp.hidden_units",
    "mlp.activation",
    "mlp.init",
    "mlp.scaling",
    "mlp.pca_components",
    "mlp.batch_size",
    "mlp.epochs",
    "mlp.learning_rate",
    "mlp.momentum",
    "mlp.schedule",
    "mlp.weight_decay",
    "mlp.flip",
    "mlp.validation_fraction",
    "mlp.seed",
    "features.kind",
]
FEATURES = Path("data/features/train_features.npy")
LABELS = Path("data/prepared/train_labels.npy")
CV = Path("results/mlp/cv.json")
MODEL = Path("data/mlp/model.npz")
HISTORY = Path("results/mlp/history.csv")
FIGURE = Path("results/mlp.png")


def _plot(history: mlp.History, title: str) -> Figure:
    epochs = range(1, len(history.train_loss) + 1)
    best = history.best_epoch
    fig = Figure(figsize=(9.6, 4.0), layout="constrained")
    acc_ax, loss_ax = fig.subplots(1, 2)

    for ax, what in ((acc_ax, "accuracy"), (loss_ax, "loss")):
        train, val = getattr(history, f"train_{what}"), getattr(history, f"val_{what}")
        ax.plot(epochs, train, marker="o", markersize=3, label=f"training {what}")
        ax.plot(epochs, val, marker="o", markersize=3, label=f"validation {what}")
        ax.axvline(best, color="grey", linestyle=":", label=f"epoch kept ({best})")
        ax.set_xlabel("epoch")
        ax.set_ylabel(what)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    acc_ax.yaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=0))
    fig.suptitle(textwrap.fill(title, width=100), fontsize="medium")
    return fig


def _cv_choice() -> dict[str, float] | None:
    """``hidden_units`` and ``learning_rate`` chosen by ``mlp_cv``, if it ran."""
    try:
        report = json.loads(CV.read_text(encoding="utf-8"))
        if not report["cross_validated"]:
            return None
        best = report["best"]
        choice = {
            "hidden_units": int(best["hidden_units"]),
            "learning_rate": float(best["learning_rate"]),
            "folds": int(report["folds"]),
        }
    except OSError as exc:
        raise PipelineError(f"{CV}: cannot read: {exc.strerror or exc}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise PipelineError(f"{CV}: not a report of stage mlp_cv ({exc!r})") from None
    return choice


def main() -> None:
    loaded = load_params(KEYS)
    params, kind = loaded["mlp"], loaded["features"]["kind"]
    log = get_logger(STAGE)

    hidden_units, learning_rate = params["hidden_units"], params["learning_rate"]
    chosen = ""
    choice = _cv_choice()
    if choice is not None:
        hidden_units, learning_rate = choice["hidden_units"], choice["learning_rate"]
        chosen = f"; units and lr chosen by {choice['folds']}-fold CV"
        log.info(
            "%s: hidden_units %d and learning_rate %g replace the mlp params",
            CV,
            hidden_units,
            learning_rate,
        )

    images, labels = mlp.load_inputs(FEATURES, LABELS)
    check_mlp_inputs(params, kind, images.shape[1], FEATURES)
    pca = params["pca_components"]
    inputs = "pixels" if kind == "raw" else f"{kind} features"
    summary = (
        f"{hidden_units} {params['activation']} hidden units, "
        f"inputs: {inputs}, {params['scaling']}"
        f"{f' + {pca} PCA components' if pca else ''}"
        f"{' + flips' if params['flip'] else ''}, "
        f"batch {params['batch_size'] or 'full'}, {params['epochs']} epochs, "
        f"lr {learning_rate:g} ({params['schedule']}), "
        f"momentum {params['momentum']:g}, weight decay {params['weight_decay']:g}"
        f"{chosen}"
    )
    log.info("%d training images of %d values; %s", *images.shape, summary)

    start = time.perf_counter()
    with progress(total=params["epochs"], desc=STAGE, unit="epoch") as bar:

        def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
            bar.set_postfix(
                loss=f"{metrics['train_loss']:.3f}",
                acc=f"{metrics['train_accuracy']:.3f}",
                val_acc=f"{metrics['val_accuracy']:.3f}",
            )
            bar.update()

        # The mlp keys are named as the arguments of fit_mlp.
        model, history = mlp.fit_mlp(
            images,
            labels,
            **{**params, "hidden_units": hidden_units, "learning_rate": learning_rate},
            on_epoch=on_epoch,
        )
    best = history.best_epoch
    log.info(
        "trained in %.1f s on %d images; kept epoch %d: validation accuracy %.4f "
        "on %d images",
        time.perf_counter() - start,
        len(images) - len(model.validation_rows),
        best,
        history.val_accuracy[best - 1],
        len(model.validation_rows),
    )

    model.save(MODEL)
    write_csv(
        HISTORY,
        mlp.History.COLUMNS,
        ((e, *(f"{v:.6f}" for v in values)) for e, *values in history.rows()),
    )
    with atomic_path(FIGURE) as tmp:
        _plot(history, f"MLP on CIFAR-10: {summary}").savefig(
            tmp, format="png", dpi=120
        )
    log.info("wrote %s, %s, %s", MODEL, HISTORY, FIGURE)


if __name__ == "__main__":
    run(STAGE, main)
