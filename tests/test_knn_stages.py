"""The distances and knn_sweep stages, run as scripts on a tiny prepared set.

Cross-validation is off here (``cv.folds: 0``, so ``knn_sweep`` chooses k on
the test split); ``tests/test_cv_stages.py`` covers the choice by ``knn_cv``.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import run_stage, set_params, stage_workdir
from scipy.spatial.distance import cdist

from cifar_baselines import knn
from cifar_baselines.read_cifar import CLASS_NAMES

N_TRAIN, N_TEST, N_FEATURES = 60, 14, 3072
K_VALUES = [5, 1, 2, 3]


def leftovers(workdir: Path) -> list[Path]:
    return sorted(p for p in workdir.rglob(".tmp-*"))


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """The repository's params.yaml (CV off), a tiny data/prepared and the
    data/features that ``features.kind: raw`` makes of it (the same files)."""
    return stage_workdir(
        tmp_path, N_TRAIN, N_TEST, knn={"k_values": K_VALUES}, cv={"folds": 0}
    )


def load(workdir: Path, part: str, what: str) -> np.ndarray:
    if what == "images":
        return np.load(workdir / "data" / "features" / f"{part}_features.npy")
    return np.load(workdir / "data" / "prepared" / f"{part}_{what}.npy")


def test_distances_then_sweep(workdir):
    done = run_stage(workdir, "distances")
    assert done.returncode == 0, done.stderr
    done = run_stage(workdir, "knn_cv")
    assert done.returncode == 0, done.stderr

    dists = np.load(workdir / "data" / "knn" / "distances.npy")
    test, train = load(workdir, "test", "images"), load(workdir, "train", "images")
    assert dists.dtype == np.float32 and dists.shape == (N_TEST, N_TRAIN)
    np.testing.assert_allclose(
        dists, cdist(test.astype(np.float64), train.astype(np.float64)), rtol=2e-5
    )

    done = run_stage(workdir, "knn_sweep")
    assert done.returncode == 0, done.stderr
    results = workdir / "results"

    metrics = json.loads((results / "knn" / "metrics.json").read_text())
    assert set(metrics) == {"best_k", "best_k_source", "best_accuracy", "accuracy"}
    assert metrics["best_k_source"] == "test"
    assert list(metrics["accuracy"]) == ["1", "2", "3", "5"]
    expected = knn.sweep_k(
        dists,
        load(workdir, "train", "labels"),
        load(workdir, "test", "labels"),
        K_VALUES,
    )
    assert metrics["best_k"] == expected.best_k
    assert metrics["best_accuracy"] == expected.best_accuracy
    assert list(metrics["accuracy"].values()) == expected.accuracy.tolist()

    with (results / "knn" / "accuracy.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(int(r["k"]), float(r["accuracy"])) for r in rows] == [
        (int(k), a) for k, a in metrics["accuracy"].items()
    ]

    with (results / "knn" / "confusion.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == N_TEST and set(rows[0]) == {"actual", "predicted"}
    names = np.asarray(CLASS_NAMES)
    assert [r["actual"] for r in rows] == list(names[load(workdir, "test", "labels")])
    assert [r["predicted"] for r in rows] == list(names[expected.best_predictions])

    assert (results / "knn.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert leftovers(workdir) == []


@pytest.mark.parametrize(
    ("k_values", "message"),
    [
        ([0, 1], r"'knn\.k_values' must hold only k >= 1, got 0"),
        ([1, N_TRAIN + 1], rf"'knn\.k_values' holds k = {N_TRAIN + 1}, more than"),
    ],
)
def test_sweep_refuses_bad_k_values(workdir, k_values, message):
    assert run_stage(workdir, "distances").returncode == 0
    set_params(workdir, knn={"k_values": k_values})

    done = run_stage(workdir, "knn_sweep")

    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("knn_sweep: error: params.yaml: ")
    assert re.search(message, lines[0])
    assert not (workdir / "results").exists()
    assert leftovers(workdir) == []


def test_distances_names_a_missing_file_and_writes_nothing(workdir):
    (workdir / "data" / "features" / "train_features.npy").unlink()

    done = run_stage(workdir, "distances")

    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "distances: error: data/features/train_features.npy: cannot read: "
        "No such file or directory"
    ]
    assert not (workdir / "data" / "knn" / "distances.npy").exists()
    assert leftovers(workdir) == []


def test_distances_refuses_images_of_other_widths(workdir):
    np.save(
        workdir / "data" / "features" / "test_features.npy",
        np.zeros((N_TEST, 100), np.float32),
    )

    done = run_stage(workdir, "distances")

    assert done.returncode == 1
    assert (
        f"data/features/test_features.npy has shape ({N_TEST}, 100) and "
        f"data/features/train_features.npy has shape ({N_TRAIN}, {N_FEATURES})"
    ) in done.stderr
    assert not (workdir / "data" / "knn").exists()


def test_sweep_names_a_labels_file_that_does_not_match(workdir):
    assert run_stage(workdir, "distances").returncode == 0
    np.save(workdir / "data" / "prepared" / "test_labels.npy", np.zeros(3, np.int64))

    done = run_stage(workdir, "knn_sweep")

    assert done.returncode == 1
    assert (
        "data/prepared/test_labels.npy holds 3 labels; expected 14, the rows of "
        "data/knn/distances.npy"
    ) in done.stderr
    assert not (workdir / "results").exists()


def test_distances_of_float32_descriptors(workdir):
    rng = np.random.default_rng(1)
    parts = {}
    for part, n in (("train", N_TRAIN), ("test", N_TEST)):
        parts[part] = rng.random((n, 40), dtype=np.float32)
        np.save(workdir / "data" / "features" / f"{part}_features.npy", parts[part])

    done = run_stage(workdir, "distances")

    assert done.returncode == 0, done.stderr
    dists = np.load(workdir / "data" / "knn" / "distances.npy")
    assert dists.dtype == np.float32 and dists.shape == (N_TEST, N_TRAIN)
    expected = cdist(parts["test"].astype(np.float64), parts["train"])
    np.testing.assert_allclose(dists, expected, rtol=1e-5)
