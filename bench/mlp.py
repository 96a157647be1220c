"""Benchmark: the numpy MLP against scikit-learn, and its epochs against bare matmuls.

Runs on a prepared split (``data/prepared`` of this repository once the
pipeline has run, else the development copy in ``/tmp/devdata/prepared``, or
``--prepared DIR``).  Every model is trained on the same rows: the training
split minus the validation rows that :func:`mlp.fit_mlp` holds out, and scored
once on the test split.  Parts:

``sklearn``
    ``mlp.fit_mlp`` with the defaults of ``params.yaml`` (what ``dvc repro``
    trains) against scikit-learn's ``MLPClassifier`` with the same hidden
    layer (64 units, ``activation="logistic"`` for the sigmoid) and its own
    defaults otherwise (Adam, learning rate 1e-3, batches of 200, alpha 1e-4)
    for 10 epochs (``max_iter=10``), after a ``StandardScaler``; both timed
    from the images as stored (uint8 for ours, float32 for scikit-learn, whose
    scaler would otherwise work in float64), in turns over ``--repeats``
    rounds.  Ours includes holding out the validation rows and scoring them
    after every epoch.
``strong``
    The stronger configuration of :data:`STRONG` (the README's
    ``dvc exp run -S ...`` command), trained once.
``tutorial``
    The tutorial's experiment through :func:`mlp.run_mlp_training`: 64 sigmoid
    units, N(0, 1) weights, unscaled pixels, 100 full-batch steps at learning
    rate 0.1, on the training part (no hold-out), trained once.
``epochs``
    Training epochs of the default and of the stronger configuration against
    the matrix products of the same epochs alone (every batch's forward and
    backward products, on arrays of the same shapes, reading fresh rows at
    every step as training does).  One ``train_mlp`` run on the training
    part, without validation data, times its epochs from its ``on_epoch``
    callback, and the callback runs one epoch of bare products before
    training goes on: training and products alternate epoch by epoch, under
    the same load when other jobs come and go.  Two ratios: of the median
    epoch after the first (steady state), and of the whole run against as
    many epochs of products (the first epoch also prepares the rows: scaling
    them and mirroring them, once per run).

    python bench/mlp.py                        # all parts
    python bench/mlp.py --parts epochs --epochs 20 --json out.json
"""

from __future__ import annotations

import cifar_baselines.blas_threads  # noqa: F401  (sets OpenBLAS up; before numpy)

# isort: split

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from cifar_baselines import mlp
from cifar_baselines.params import defaults

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import finish, open_results, parse_parts, report, time_rounds

REPO = Path(__file__).resolve().parents[1]
DEV_PREPARED = Path("/tmp/devdata/prepared")
PARTS = ("sklearn", "strong", "epochs", "tutorial")
SKLEARN_EPOCHS = 10

DEFAULT = defaults()["mlp"]
# The stronger configuration; README.md gives it as a `dvc exp run -S` command.
STRONG = DEFAULT | {
    "hidden_units": 1024,
    "activation": "relu",
    "init": "he",
    "pca_components": 512,
    "batch_size": 512,
    "epochs": 30,
    "learning_rate": 0.04,
    "weight_decay": 0.005,
}


def default_prepared() -> Path:
    """``data/prepared`` of the repository when the pipeline has made it."""
    repo = REPO / "data" / "prepared"
    return repo if (repo / "train_images.npy").is_file() else DEV_PREPARED


def changed(config: dict[str, object]) -> str:
    """The keys of ``config`` that differ from the defaults, as ``-S`` options."""
    return " ".join(
        f"-S mlp.{k}={v}".replace("True", "true").replace("False", "false")
        for k, v in config.items()
        if DEFAULT[k] != v
    )


def part_sklearn(data: dict[str, np.ndarray], repeats: int) -> dict[str, object]:
    train_rows, _ = mlp.split_validation(
        len(data["train_labels"]), DEFAULT["validation_fraction"], DEFAULT["seed"]
    )
    x_sk = data["train_images"][train_rows].astype(np.float32)
    y_sk = data["train_labels"][train_rows]
    test_sk = data["test_images"].astype(np.float32)
    accuracy: dict[str, float] = {}

    def ours() -> None:
        model, _ = mlp.fit_mlp(data["train_images"], data["train_labels"], **DEFAULT)
        accuracy["numpy mlp"] = model.accuracy(data["test_images"], data["test_labels"])

    def scikit_learn() -> None:
        pipe = make_pipeline(
            StandardScaler(),
            MLPClassifier(
                hidden_layer_sizes=(DEFAULT["hidden_units"],),
                activation="logistic",
                max_iter=SKLEARN_EPOCHS,
                random_state=0,
            ),
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            pipe.fit(x_sk, y_sk)
        accuracy["scikit-learn"] = float(pipe.score(test_sk, data["test_labels"]))

    print(f"\nsklearn: {len(y_sk)} training images; ours: {DEFAULT}")
    seconds = time_rounds({"numpy mlp": ours, "scikit-learn": scikit_learn}, repeats)
    rows = report(
        f"training time, {DEFAULT['epochs']} epochs (ours) against "
        f"{SKLEARN_EPOCHS} (scikit-learn), median of {repeats}",
        seconds,
        "scikit-learn",
    )
    for name, value in accuracy.items():
        print(f"  test accuracy {name:<12} {value:.4f}")
        rows[name]["test_accuracy"] = value
    return rows


def part_strong(data: dict[str, np.ndarray]) -> dict[str, object]:
    print(f"\nstrong: dvc exp run {changed(STRONG)}")
    start = time.perf_counter()
    model, history = mlp.fit_mlp(data["train_images"], data["train_labels"], **STRONG)
    seconds = time.perf_counter() - start
    accuracy = model.accuracy(data["test_images"], data["test_labels"])
    print(
        f"  trained in {seconds:.1f} s ({seconds / 60:.1f} min); kept epoch "
        f"{history.best_epoch}; test accuracy {accuracy:.4f}"
    )
    return {
        "config": STRONG,
        "seconds": seconds,
        "test_accuracy": accuracy,
        "best_epoch": history.best_epoch,
        "val_accuracy": history.val_accuracy,
    }


def part_tutorial(data: dict[str, np.ndarray]) -> dict[str, object]:
    print("\ntutorial: run_mlp_training(d_h=64, learning_rate=0.1, num_epoch=100)")
    start = time.perf_counter()
    train_accuracies, test_accuracy = mlp.run_mlp_training(
        data["train_images"].astype(np.float32),
        data["train_labels"],
        data["test_images"].astype(np.float32),
        data["test_labels"],
        64,
        0.1,
        100,
    )
    seconds = time.perf_counter() - start
    print(
        f"  {seconds:.1f} s; training accuracy after the last step "
        f"{train_accuracies[-1]:.4f}; test accuracy {test_accuracy:.4f}"
    )
    return {
        "seconds": seconds,
        "train_accuracies": train_accuracies,
        "test_accuracy": test_accuracy,
    }


def bare_steps(x: np.ndarray, w1: np.ndarray, w2: np.ndarray, batch: int) -> None:
    """The matrix products of training steps on the rows of ``x``, batch by batch.

    ``x`` (n_rows, d_in) is cut into batches as training cuts its rows, so the
    products read fresh rows from memory at every step, as training does.
    """
    for start in range(0, len(x), batch):
        xb = x[start : start + batch]
        a1 = xb @ w1  # forward
        dz2 = a1 @ w2
        _ = a1.T @ dz2  # backward
        dz1 = dz2 @ w2.T
        _ = xb.T @ dz1


def part_epochs(
    data: dict[str, np.ndarray], config: dict[str, object], epochs: int
) -> dict[str, object]:
    """Training epochs against their matrix products, alternating in one run."""
    rng = np.random.default_rng(0)
    batch, d_h = config["batch_size"], config["hidden_units"]
    train_rows, _ = mlp.split_validation(
        len(data["train_labels"]), config["validation_fraction"], config["seed"]
    )
    labels = data["train_labels"][train_rows]
    if config["pca_components"]:
        # Projected rows are float32; their values do not change the timing.
        shape = (len(train_rows), config["pca_components"])
        rows = rng.standard_normal(shape, dtype=np.float32)
        inputs = {"data_train_flipped": rng.standard_normal(shape, dtype=np.float32)}
    else:
        rows = data["train_images"][train_rows]  # uint8, scaled by train_mlp
        shift, scale = mlp.fit_scaling(rows, config["scaling"], mirrored=True)
        inputs = {"input_shift": shift, "input_scale": scale}
    d_in = rows.shape[1]
    weights = mlp.init_weights(d_in, d_h, mlp.N_CLASSES, init=config["init"])
    fresh = rng.standard_normal(rows.shape, dtype=np.float32)
    seconds: dict[str, list[float]] = {"training": [], "products": []}
    mark = [0.0]

    def between_epochs(epoch: int, metrics: dict[str, float]) -> None:
        seconds["training"].append(time.perf_counter() - mark[0])
        start = time.perf_counter()
        bare_steps(fresh, weights[0], weights[2], batch)
        seconds["products"].append(time.perf_counter() - start)
        mark[0] = time.perf_counter()

    mark[0] = time.perf_counter()
    mlp.train_mlp(
        *weights,
        rows,
        labels,
        config["learning_rate"],
        epochs,
        activation=config["activation"],
        batch_size=batch,
        momentum=config["momentum"],
        schedule=config["schedule"],
        weight_decay=config["weight_decay"],
        flip=config["flip"],
        **inputs,
        on_epoch=between_epochs,
    )
    steady = {name: values[1:] for name, values in seconds.items()}
    title = (
        f"{d_h} units, {d_in} inputs, batches of {batch}, {len(train_rows)} rows: "
        f"epochs 2 to {epochs} against their matrix products"
    )
    result = report(title, steady, "products")
    whole = sum(seconds["training"]) / sum(seconds["products"])
    print(
        f"  whole run ({epochs} epochs, the first preparing the rows): "
        f"{sum(seconds['training']):.2f} s, {whole:.2f}x its products "
        f"(first epoch {seconds['training'][0]:.2f} s)"
    )
    return {"steady": result, "whole_run_ratio": whole, "seconds": seconds}


def load(prepared: Path) -> dict[str, np.ndarray]:
    images, labels = mlp.load_split(prepared, "train")
    test_images, test_labels = mlp.load_split(prepared, "test")
    return {
        "train_images": images,
        "train_labels": labels,
        "test_images": test_images,
        "test_labels": test_labels,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepared", type=Path, default=default_prepared())
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--epochs", type=int, default=10, help="epochs per run in the epochs part"
    )
    parser.add_argument(
        "--parts", default=",".join(PARTS), help=f"comma-separated, from {PARTS}"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args, parts = parse_parts(parser, argv, PARTS)

    data = load(args.prepared)
    results = open_results(args.prepared)

    if "sklearn" in parts:
        results["sklearn"] = part_sklearn(data, args.repeats)
    if "strong" in parts:
        results["strong"] = part_strong(data)
    if "tutorial" in parts:
        results["tutorial"] = part_tutorial(data)
    if "epochs" in parts:
        results["epochs"] = {
            name: part_epochs(data, config, args.epochs)
            for name, config in (("default", DEFAULT), ("strong", STRONG))
        }

    return finish(results, args.json)


if __name__ == "__main__":
    sys.exit(main())
