"""Stage mlp_train: train the one-hidden-layer perceptron on the training split.

Reads every key of the ``mlp`` section and ``data/prepared/train_{images,labels}.npy``.
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

import textwrap
import time
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter

from cifar_baselines import mlp
from cifar_baselines.atomic import atomic_path, write_csv
from cifar_baselines.params import load_params
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
]
PREPARED = Path("data/prepared")
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


def main() -> None:
    params = load_params(KEYS)["mlp"]
    log = get_logger(STAGE)

    images, labels = mlp.load_split(PREPARED, "train")
    pca = params["pca_components"]
    summary = (
        f"{params['hidden_units']} {params['activation']} hidden units, "
        f"inputs: {params['scaling']}{f' + {pca} PCA components' if pca else ''}"
        f"{' + flips' if params['flip'] else ''}, "
        f"batch {params['batch_size'] or 'full'}, {params['epochs']} epochs, "
        f"lr {params['learning_rate']:g} ({params['schedule']}), "
        f"momentum {params['momentum']:g}, weight decay {params['weight_decay']:g}"
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

        model, history = mlp.fit_mlp(
            images,
            labels,
            hidden_units=params["hidden_units"],
            activation=params["activation"],
            init=params["init"],
            scaling=params["scaling"],
            pca_components=params["pca_components"],
            batch_size=params["batch_size"],
            epochs=params["epochs"],
            learning_rate=params["learning_rate"],
            momentum=params["momentum"],
            schedule=params["schedule"],
            weight_decay=params["weight_decay"],
            flip=params["flip"],
            validation_fraction=params["validation_fraction"],
            seed=params["seed"],
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
