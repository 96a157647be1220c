"""Benchmark: descriptors for all 60,000 images, and what they buy the classifiers.

Part 1 (timing) computes each descriptor kind for the train and test images
together with ``n_jobs=1`` and with ``n_jobs=2``, alternating the two over
``--repeats`` rounds, and reports the median time of each and the ratio of the
medians.  The two results must be equal element for element.

Part 2 (accuracy) compares raw pixels, HOG and HOG + colour histograms for the
kNN rule: k is chosen by ``--folds``-fold cross-validation on the training
split only (``cifar_baselines.cv.knn_cv``), then the chosen k is evaluated
once on the test split.  With ``--mlp`` the numpy MLP (ReLU, He
initialisation, standardised inputs, momentum, cosine schedule) is trained on
the same descriptors and tested once; with ``--mlp-folds N`` its hidden units
and learning rate are first chosen on a grid by N-fold cross-validation
(``cifar_baselines.cv.mlp_cv``).

Other jobs may share the machine: the timing is a median over repeats and the
figure that matters is the ratio between two runs made side by side.  On a
Linux machine with ``sched_autogroup_enabled`` (this one), CPU time is shared
between sessions, not processes: while other sessions keep the cores busy, the
two workers share one session's slice and the ratio stays near 1.  The CPU
seconds each run used are therefore reported too (the workers' are sampled
every 0.1 s with psutil, so they can fall short by up to 0.1 s per worker):
equal totals for one and two processes mean no work is duplicated, and an
even split between the workers means both cores are used when they are free.

    python bench/features.py --prepared /tmp/devdata/prepared
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

from cifar_baselines import cv, features, knn, mlp

DESCRIPTORS = ("hog", "color_hist", "hog+color_hist")
STUDY = ("raw", "hog", "hog+color_hist")


def load(prepared: Path) -> dict[str, np.ndarray]:
    """The prepared split: uint8 images and int64 labels, train and test."""
    return {
        name: np.load(prepared / f"{name}.npy")
        for name in ("train_images", "train_labels", "test_images", "test_labels")
    }


class ChildCpu:
    """CPU seconds of each child process, sampled in a thread while in use."""

    def __enter__(self) -> ChildCpu:
        self.seconds: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        me = psutil.Process()
        while not self._stop.wait(0.1):
            for child in me.children(recursive=True):
                try:
                    used = child.cpu_times()
                except psutil.Error:
                    continue
                self.seconds[child.pid] = used.user + used.system

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def time_kind(images: np.ndarray, kind: str, repeats: int) -> dict[str, object]:
    """Median wall and CPU seconds for ``kind`` with one and with two processes."""
    wall: dict[int, list[float]] = {1: [], 2: []}
    cpu: dict[int, list[float]] = {1: [], 2: []}
    split: list[list[float]] = []
    results: dict[int, np.ndarray] = {}
    for round_ in range(repeats):
        # Alternate which one goes first, so drift in the load on the machine
        # does not favour either.
        order = (1, 2) if round_ % 2 == 0 else (2, 1)
        for n_jobs in order:
            start, own = time.perf_counter(), time.process_time()
            with ChildCpu() as children:
                results[n_jobs] = features.compute_features(
                    images, kind=kind, n_jobs=n_jobs
                )
            wall[n_jobs].append(time.perf_counter() - start)

            # Children that used CPU: the fork server (its imports, about half
            # a second) and the pool's workers.
            workers = sorted(s for s in children.seconds.values() if s > 0.1)
            cpu[n_jobs].append(time.process_time() - own + sum(workers))
            if n_jobs == 2:
                split.append(workers)

    if not np.array_equal(results[1], results[2]):
        raise AssertionError(f"{kind}: n_jobs=2 differs from n_jobs=1")
    one, two = statistics.median(wall[1]), statistics.median(wall[2])
    return {
        "kind": kind,
        "dim": results[1].shape[1],
        "n_images": len(images),
        "seconds_1": one,
        "seconds_2": two,
        "speedup": one / two,
        "cpu_seconds_1": statistics.median(cpu[1]),
        "cpu_seconds_2": statistics.median(cpu[2]),
        "worker_cpu_seconds": split,
        "all_seconds_1": wall[1],
        "all_seconds_2": wall[2],
        "load_average_1min": os.getloadavg()[0],
    }


def describe(
    data: dict[str, np.ndarray], kind: str
) -> tuple[np.ndarray, np.ndarray, float]:
    """Descriptors of the train and test images, and the seconds they took."""
    n_train = len(data["train_images"])
    images = np.concatenate([data["train_images"], data["test_images"]])
    start = time.perf_counter()
    described = features.compute_features(images, kind=kind, n_jobs=2)
    return described[:n_train], described[n_train:], time.perf_counter() - start


def knn_study(
    data: dict[str, np.ndarray],
    train: np.ndarray,
    test: np.ndarray,
    folds: int,
    k_values: list[int],
) -> dict[str, object]:
    """kNN with k chosen by cross-validation on train, then tested once."""
    start = time.perf_counter()
    result = cv.knn_cv(train, data["train_labels"], k_values, n_folds=folds, seed=0)
    seconds_cv = time.perf_counter() - start

    # The one look at the test split, with the k chosen above.
    start = time.perf_counter()
    accuracy = knn.evaluate_knn(
        train, data["train_labels"], test, data["test_labels"], result.best_k
    )
    seconds_test = time.perf_counter() - start

    best = result.k_values.index(result.best_k)
    return {
        "best_k": result.best_k,
        "cv_mean": float(result.mean[best]),
        "cv_std": float(result.std[best]),
        "test_accuracy": accuracy,
        "seconds_cv": seconds_cv,
        "seconds_test": seconds_test,
        "cv": result.to_dict(),
    }


def fit_and_score(
    x_fit: np.ndarray,
    y_fit: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    **settings: object,
) -> float:
    """Train the numpy MLP on ``x_fit`` and return its accuracy on ``x_val``."""
    model, _ = mlp.fit_mlp(x_fit, y_fit, **settings)
    return float(np.mean(model.predict_proba(x_val).argmax(axis=1) == y_val))


def mlp_study(
    data: dict[str, np.ndarray],
    train: np.ndarray,
    test: np.ndarray,
    settings: dict[str, object],
    folds: int,
    grid: dict[str, list],
) -> dict[str, object]:
    """The MLP with ``settings``; with ``folds``, the grid point chosen by CV."""
    report: dict[str, object] = {}
    start = time.perf_counter()
    if folds:
        fixed = {name: v for name, v in settings.items() if name not in grid}
        result = cv.mlp_cv(
            train,
            data["train_labels"],
            grid,
            n_folds=folds,
            seed=0,
            train_fn=functools.partial(fit_and_score, **fixed),
        )
        settings = {**settings, **result.best_point}
        report["cv"] = result.to_dict()
    report["seconds_cv"] = time.perf_counter() - start

    # The one look at the test split, with the chosen settings.
    start = time.perf_counter()
    report["test_accuracy"] = fit_and_score(
        train, data["train_labels"], test, data["test_labels"], **settings
    )
    report["seconds_test"] = time.perf_counter() - start
    report["settings"] = settings
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--kmax", type=int, default=20)
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--knn", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--mlp", action="store_true", help="also study the MLP")
    parser.add_argument("--mlp-folds", type=int, default=0, help="0: no MLP CV")
    parser.add_argument("--mlp-hidden", type=int, nargs="+", default=[256])
    parser.add_argument("--mlp-lr", type=float, nargs="+", default=[0.05])
    parser.add_argument("--mlp-epochs", type=int, default=30)
    parser.add_argument("--mlp-weight-decay", type=float, default=1e-4)
    parser.add_argument("--kinds", nargs="+", default=list(STUDY))
    parser.add_argument("--timing-kinds", nargs="+", default=list(DESCRIPTORS))
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    data = load(args.prepared)
    report: dict[str, list] = {"timing": [], "knn": [], "mlp": []}

    if not args.skip_timing:
        images = np.concatenate([data["train_images"], data["test_images"]])
        print(f"descriptors for {len(images)} images, median of {args.repeats}")
        print(
            f"{'kind':<16}{'dim':>6}{'1 proc s':>10}{'2 procs s':>11}{'ratio':>7}"
            f"{'CPU s 1':>9}{'CPU s 2':>9}  child CPU s (last run)  load"
        )
        for kind in args.timing_kinds:
            row = time_kind(images, kind, args.repeats)
            report["timing"].append(row)
            workers = " + ".join(f"{s:.1f}" for s in row["worker_cpu_seconds"][-1])
            print(
                f"{kind:<16}{row['dim']:>6}{row['seconds_1']:>10.1f}"
                f"{row['seconds_2']:>11.1f}{row['speedup']:>7.2f}"
                f"{row['cpu_seconds_1']:>9.1f}{row['cpu_seconds_2']:>9.1f}"
                f"  {workers:<23}  {row['load_average_1min']:.1f}",
                flush=True,
            )

    if not args.skip_accuracy:
        k_values = list(range(1, args.kmax + 1))
        settings = {
            "hidden_units": args.mlp_hidden[0],
            "activation": "relu",
            "init": "he",
            "scaling": "standardize",
            "batch_size": 128,
            "epochs": args.mlp_epochs,
            "learning_rate": args.mlp_lr[0],
            "momentum": 0.9,
            "schedule": "cosine",
            "weight_decay": args.mlp_weight_decay,
            "validation_fraction": 0.1,
            "flip": False,
            "seed": 0,
        }
        grid = {"hidden_units": args.mlp_hidden, "learning_rate": args.mlp_lr}
        print(f"kNN: k in 1..{args.kmax} by {args.folds}-fold CV on train, test once")
        print(f"MLP: {settings}")
        if args.mlp_folds:
            print(f"MLP: grid {grid} by {args.mlp_folds}-fold CV on train, test once")
        for kind in args.kinds:
            train, test, seconds = describe(data, kind)
            print(f"{kind}: {train.shape[1]} columns in {seconds:.0f} s", flush=True)
            if args.knn:
                row = knn_study(data, train, test, args.folds, k_values)
                report["knn"].append({"kind": kind, **row})
                print(
                    f"  kNN  best k {row['best_k']:>2}  CV {row['cv_mean']:.4f} "
                    f"± {row['cv_std']:.4f}  test {row['test_accuracy']:.4f}  "
                    f"({row['seconds_cv']:.0f} s CV)",
                    flush=True,
                )
            if args.mlp:
                row = mlp_study(data, train, test, settings, args.mlp_folds, grid)
                report["mlp"].append({"kind": kind, **row})
                chosen = {n: row["settings"][n] for n in grid}
                print(
                    f"  MLP  {chosen}  test {row['test_accuracy']:.4f}  "
                    f"({row['seconds_cv']:.0f} s CV, {row['seconds_test']:.0f} s "
                    "train+test)",
                    flush=True,
                )

    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
