"""The cross-validation stages knn_cv and mlp_cv, and how their choice reaches
knn_sweep and mlp_train; run as scripts on a tiny set of descriptors."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO, run_stage, set_params

from cifar_baselines import cv, knn, mlp
from cifar_baselines.read_cifar import CLASS_NAMES

N_TRAIN, N_TEST, N_FEATURES = 60, 14, 12
K_VALUES = [1, 2, 3, 5, 7]
FOLDS = 3
TEST_FILES = (
    "data/prepared/test_images.npy",
    "data/prepared/test_labels.npy",
    "data/features/test_features.npy",
)


def run_ok(workdir: Path, *names: str) -> None:
    for name in names:
        done = run_stage(workdir, name)
        assert done.returncode == 0, f"{name}:\n{done.stderr}"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """Params for descriptors (``hog``, no flips, a small MLP, 3 folds) and
    tiny float32 descriptors in data/features, classes shifted apart so that
    the kNN accuracy depends on k."""
    (tmp_path / "params.yaml").write_text(
        (REPO / "params.yaml").read_text(encoding="utf-8"), encoding="utf-8"
    )
    set_params(
        tmp_path,
        features={"kind": "hog"},
        knn={"k_values": K_VALUES},
        cv={"folds": FOLDS},
        mlp={"flip": False, "hidden_units": 8, "epochs": 3, "batch_size": 16},
    )

    rng = np.random.default_rng(0)
    centres = rng.normal(0, 0.6, size=(len(CLASS_NAMES), N_FEATURES))
    for folder in ("prepared", "features"):
        (tmp_path / "data" / folder).mkdir(parents=True)
    for part, n in (("train", N_TRAIN), ("test", N_TEST)):
        labels = rng.permutation(np.arange(n) % len(CLASS_NAMES)).astype(np.int64)
        rows = centres[labels] + rng.normal(size=(n, N_FEATURES))
        np.save(tmp_path / f"data/features/{part}_features.npy", rows.astype("f4"))
        np.save(tmp_path / f"data/prepared/{part}_labels.npy", labels)
        images = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        np.save(tmp_path / f"data/prepared/{part}_images.npy", images)
    return tmp_path


def load(workdir: Path, name: str) -> np.ndarray:
    return np.load(workdir / name)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def test_knn_cv_result_and_its_choice_in_knn_sweep(workdir):
    run_ok(workdir, "knn_cv", "distances", "knn_sweep")

    features = load(workdir, "data/features/train_features.npy")
    labels = load(workdir, "data/prepared/train_labels.npy")
    expected = cv.knn_cv(features, labels, K_VALUES, n_folds=FOLDS, seed=0)
    report = read_json(workdir / "results/knn/cv.json")
    assert report["folds"] == FOLDS and report["best_k"] == expected.best_k
    assert report["mean_accuracy"] == {
        str(k): pytest.approx(m) for k, m in zip(K_VALUES, expected.mean, strict=True)
    }
    assert report["std_accuracy"]["1"] == pytest.approx(expected.std[0])
    best = K_VALUES.index(expected.best_k)
    assert report["best_mean_accuracy"] == pytest.approx(expected.mean[best])

    with (workdir / "results/knn/cv.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == [
        "k",
        "mean",
        "std",
        "mean_minus_std",
        "mean_plus_std",
        "fold_1",
        "fold_2",
        "fold_3",
    ]
    assert [int(r["k"]) for r in rows] == K_VALUES
    folds = np.array([[float(r[f"fold_{f}"]) for f in (1, 2, 3)] for r in rows])
    np.testing.assert_allclose(folds, expected.fold_accuracy.T)
    np.testing.assert_allclose(
        [float(r["mean_plus_std"]) for r in rows], expected.mean + expected.std
    )
    assert (workdir / "results/knn_cv.png").read_bytes()[:4] == b"\x89PNG"

    # knn_sweep reports the k chosen on the folds, and its test accuracy.
    metrics = read_json(workdir / "results/knn/metrics.json")
    assert metrics["best_k"] == expected.best_k
    assert metrics["best_k_source"] == "cv"
    assert metrics["best_accuracy"] == metrics["accuracy"][str(expected.best_k)]
    dists = load(workdir, "data/knn/distances.npy")
    predicted = knn.knn_predict(dists, labels, expected.best_k)
    with (workdir / "results/knn/confusion.csv").open() as f:
        confusion = list(csv.DictReader(f))
    assert [r["predicted"] for r in confusion] == [CLASS_NAMES[i] for i in predicted]


def test_knn_cv_off_leaves_the_choice_to_the_test_split(workdir):
    set_params(workdir, cv={"folds": 0})

    run_ok(workdir, "knn_cv", "distances", "knn_sweep")

    assert read_json(workdir / "results/knn/cv.json") == {"folds": 0}
    assert (workdir / "results/knn/cv.csv").read_text() == (
        "k,mean,std,mean_minus_std,mean_plus_std\n"
    )
    metrics = read_json(workdir / "results/knn/metrics.json")
    assert metrics["best_k_source"] == "test"
    assert metrics["best_accuracy"] == max(metrics["accuracy"].values())


def test_knn_sweep_refuses_a_cv_report_for_other_k_values(workdir):
    run_ok(workdir, "knn_cv", "distances")
    set_params(workdir, knn={"k_values": [1, 2]})

    done = run_stage(workdir, "knn_sweep")

    assert done.returncode == 1
    assert done.stderr.strip() == (
        "knn_sweep: error: results/knn/cv.json scored k = [1, 2, 3, 5, 7] but "
        "params.yaml lists 'knn.k_values' [1, 2]: run stage knn_cv again (dvc repro)"
    )
    assert not (workdir / "results/knn/metrics.json").exists()


def test_the_cv_stages_never_read_the_test_split(workdir):
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name in ("knn_cv", "mlp_cv"):
        assert not [d for d in stages[name]["deps"] if "test" in Path(d).name], name

    # With every test file gone, both stages still run: they open none.
    for name in TEST_FILES:
        (workdir / name).unlink()
    set_params(
        workdir,
        cv={"mlp": True, "mlp_hidden_units": [4], "mlp_learning_rates": [0.05]},
    )
    run_ok(workdir, "knn_cv", "mlp_cv")

    assert read_json(workdir / "results/knn/cv.json")["folds"] == FOLDS
    assert read_json(workdir / "results/mlp/cv.json")["cross_validated"] is True


def test_mlp_cv_skips_diverged_points_and_mlp_train_uses_its_choice(workdir):
    set_params(
        workdir,
        cv={
            "mlp": True,
            "mlp_hidden_units": [4, 6],
            "mlp_learning_rates": [0.05, 1e12],
        },
        mlp={"activation": "relu", "init": "normal"},
    )

    run_ok(workdir, "mlp_cv")

    report = read_json(workdir / "results/mlp/cv.json")
    assert report["cross_validated"] is True and report["folds"] == FOLDS
    assert [(p["hidden_units"], p["learning_rate"]) for p in report["grid"]] == [
        (4, 0.05),
        (4, 1e12),
        (6, 0.05),
        (6, 1e12),
    ]
    for point in report["grid"][1::2]:  # learning rate 1e12
        assert point["mean"] is None
        assert re.match(r"fold 0: training diverged in epoch 1", point["failed"])
    scored = report["grid"][0::2]
    best = max(scored, key=lambda p: p["mean"])  # the first on a tie
    assert report["best"] == {
        "hidden_units": best["hidden_units"],
        "learning_rate": 0.05,
    }
    assert report["best_mean_accuracy"] == best["mean"]
    assert best["mean"] == pytest.approx(np.mean(best["folds"]))

    # mlp.hidden_units is 8 and mlp.learning_rate 0.1: the choice replaces them.
    done = run_stage(workdir, "mlp_train")
    assert done.returncode == 0, done.stderr
    assert "results/mlp/cv.json: hidden_units" in done.stderr
    model = mlp.MLPModel.load(workdir / "data/mlp/model.npz")
    assert model.w1.shape == (N_FEATURES, best["hidden_units"])
    run_ok(workdir, "mlp_test")
    metrics = read_json(workdir / "results/mlp/metrics.json")
    assert 0 <= metrics["test_accuracy"] <= 1


def test_mlp_cv_off_writes_the_same_report_whatever_the_params(workdir):
    run_ok(workdir, "mlp_cv")
    first = (workdir / "results/mlp/cv.json").read_bytes()
    set_params(workdir, cv={"folds": 0, "mlp_hidden_units": [3]}, mlp={"epochs": 7})
    run_ok(workdir, "mlp_cv")

    assert (workdir / "results/mlp/cv.json").read_bytes() == first
    assert json.loads(first) == {"cross_validated": False}


@pytest.mark.parametrize("stage", ["mlp_train", "mlp_cv"])
def test_flips_are_refused_on_descriptors(workdir, stage):
    set_params(workdir, mlp={"flip": True}, cv={"mlp": True})
    (workdir / "results/mlp").mkdir(parents=True)
    (workdir / "results/mlp/cv.json").write_text('{"cross_validated": false}\n')

    done = run_stage(workdir, stage)

    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"{stage}: error: params.yaml: 'mlp.flip' is true but 'features.kind' is "
        "'hog': only raw pixel rows can be mirrored; set mlp.flip to false"
    )
    assert not (workdir / "data/mlp").exists()
    assert list((workdir / "results").rglob("*.*")) == [workdir / "results/mlp/cv.json"]


def test_mlp_cv_needs_folds(workdir):
    set_params(workdir, cv={"mlp": True, "folds": 0})

    done = run_stage(workdir, "mlp_cv")

    assert done.returncode == 1
    assert done.stderr.strip() == (
        "mlp_cv: error: params.yaml: 'cv.mlp' is true but 'cv.folds' is 0; set "
        "cv.folds to 2 or more, or cv.mlp to false"
    )
    assert not (workdir / "results").exists()


def test_the_mlp_projects_descriptors_onto_principal_components(workdir):
    set_params(workdir, mlp={"pca_components": 5})

    run_ok(workdir, "mlp_cv", "mlp_train", "mlp_test")

    # The projection is folded into the first layer: the model takes descriptors.
    model = mlp.MLPModel.load(workdir / "data/mlp/model.npz")
    assert model.w1.shape == (N_FEATURES, 8)
    assert model.shift.dtype == np.float32 and model.shift.shape == (N_FEATURES,)


@pytest.mark.parametrize("stage", ["mlp_train", "mlp_cv"])
def test_more_components_than_descriptor_values_are_refused(workdir, stage):
    set_params(workdir, mlp={"pca_components": N_FEATURES + 1}, cv={"mlp": True})
    (workdir / "results/mlp").mkdir(parents=True)
    (workdir / "results/mlp/cv.json").write_text('{"cross_validated": false}\n')

    done = run_stage(workdir, stage)

    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"{stage}: error: params.yaml: 'mlp.pca_components' is {N_FEATURES + 1}, "
        f"more than the {N_FEATURES} values per image of "
        "data/features/train_features.npy (features.kind 'hog')"
    )
    assert not (workdir / "data/mlp").exists()
