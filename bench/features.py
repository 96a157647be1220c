"""Benchmark: descriptors for all 60,000 images, and what they buy the classifiers.

Part 1 (timing) computes each descriptor kind for the train and test images
together with ``n_jobs=1`` and with ``n_jobs=2``, alternating the two over
``--repeats`` rounds, and reports the median time of each and the ratio of the
medians.  The two results must be equal element for element.

Part 2 (accuracy) compares raw pixels, HOG and HOG + colour histograms for the
kNN rule: k is chosen by ``--folds``-fold cross-validation on the training
split only (``cifar_baselines.cv.knn_cv``), then the chosen k is evaluated
once on the test split.

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
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

from cifar_baselines import cv, features, knn

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

            # The pool's workers are the children that did real work (the
            # fork server itself only forks them).
            workers = sorted(s for s in children.seconds.values() if s > 0.5)
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


def knn_study(
    data: dict[str, np.ndarray], kind: str, folds: int, k_values: list[int]
) -> dict[str, float]:
    """kNN with k chosen by cross-validation on train, then tested once."""
    n_train = len(data["train_images"])
    images = np.concatenate([data["train_images"], data["test_images"]])
    start = time.perf_counter()
    described = features.compute_features(images, kind=kind, n_jobs=2)
    train, test = described[:n_train], described[n_train:]
    seconds_features = time.perf_counter() - start

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
        "kind": kind,
        "best_k": result.best_k,
        "cv_mean": float(result.mean[best]),
        "cv_std": float(result.std[best]),
        "test_accuracy": accuracy,
        "seconds_features": seconds_features,
        "seconds_cv": seconds_cv,
        "seconds_test": seconds_test,
        "cv": result.to_dict(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--kmax", type=int, default=20)
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    data = load(args.prepared)
    report: dict[str, list] = {"timing": [], "knn": []}

    if not args.skip_timing:
        images = np.concatenate([data["train_images"], data["test_images"]])
        print(f"descriptors for {len(images)} images, median of {args.repeats}")
        print(
            f"{'kind':<16}{'dim':>6}{'1 proc s':>10}{'2 procs s':>11}{'ratio':>7}"
            f"{'CPU s 1':>9}{'CPU s 2':>9}  worker CPU s (last run)  load"
        )
        for kind in DESCRIPTORS:
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
        print(f"kNN, k in 1..{args.kmax} by {args.folds}-fold CV on train, test once")
        print(f"{'kind':<16}{'best k':>7}{'CV mean':>9}{'CV std':>8}{'test':>7}")
        for kind in STUDY:
            row = knn_study(data, kind, args.folds, k_values)
            report["knn"].append(row)
            print(
                f"{kind:<16}{row['best_k']:>7}{row['cv_mean']:>9.4f}"
                f"{row['cv_std']:>8.4f}{row['test_accuracy']:>7.4f}"
                f"   ({row['seconds_cv']:.0f} s CV)",
                flush=True,
            )

    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
