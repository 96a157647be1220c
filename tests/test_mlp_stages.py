"""The mlp_train and mlp_test stages, run as scripts on a tiny prepared set.

The MLP grid search is off here (``results/mlp/cv.json`` says so, as stage
``mlp_cv`` writes it with ``cv.mlp: false``); ``tests/test_cv_stages.py``
covers the choice by ``mlp_cv``.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import run_stage, set_params, stage_workdir

from cifar_baselines import mlp
from cifar_baselines.read_cifar import CLASS_NAMES

N_TRAIN, N_TEST = 120, 30
EPOCHS = 3
OUTPUTS = ("data/mlp", "results")
CV_REPORT = Path("results/mlp/cv.json")  # an input of mlp_train


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """The repository's params.yaml (a small network), a tiny data/prepared,
    the data/features that ``features.kind: raw`` makes of it, and the report
    of ``mlp_cv`` with the grid search off."""
    network = {"hidden_units": 8, "epochs": EPOCHS, "batch_size": 32}
    stage_workdir(tmp_path, N_TRAIN, N_TEST, mlp=network)
    (tmp_path / CV_REPORT).parent.mkdir(parents=True)
    (tmp_path / CV_REPORT).write_text('{"cross_validated": false}\n')
    return tmp_path


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def written(workdir: Path) -> list[Path]:
    inputs = {workdir / CV_REPORT, (workdir / CV_REPORT).parent}
    return sorted(
        p for out in OUTPUTS for p in (workdir / out).rglob("*") if p not in inputs
    )


def test_train_then_test(workdir):
    done = run_stage(workdir, "mlp_train")
    assert done.returncode == 0, done.stderr

    model = mlp.MLPModel.load(workdir / "data" / "mlp" / "model.npz")
    assert model.w1.shape == (3072, 8) and model.activation == "sigmoid"
    assert len(model.validation_rows) == round(0.1 * N_TRAIN)
    history = read_csv(workdir / "results" / "mlp" / "history.csv")
    assert list(history[0]) == list(mlp.History.COLUMNS)
    assert [int(row["epoch"]) for row in history] == list(range(1, EPOCHS + 1))
    assert (workdir / "results" / "mlp.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    done = run_stage(workdir, "mlp_test")
    assert done.returncode == 0, done.stderr

    metrics = json.loads((workdir / "results/mlp/metrics.json").read_text())
    assert set(metrics) == {
        "test_accuracy",
        "test_loss",
        "train_accuracy",
        "val_accuracy",
        "best_epoch",
        "per_class_accuracy",
    }
    assert list(metrics["per_class_accuracy"]) == list(CLASS_NAMES)
    kept = metrics["best_epoch"] - 1
    assert metrics["val_accuracy"] == pytest.approx(
        float(history[kept]["val_accuracy"]), abs=1e-6
    )

    confusion = read_csv(workdir / "results" / "mlp" / "confusion.csv")
    labels = np.load(workdir / "data" / "prepared" / "test_labels.npy")
    assert len(confusion) == N_TEST
    assert [row["actual"] for row in confusion] == [CLASS_NAMES[i] for i in labels]
    assert {row["predicted"] for row in confusion} <= set(CLASS_NAMES)
    right = [row["actual"] == row["predicted"] for row in confusion]
    assert metrics["test_accuracy"] == pytest.approx(np.mean(right))
    for name, accuracy in metrics["per_class_accuracy"].items():
        mine = [
            r for row, r in zip(confusion, right, strict=True) if row["actual"] == name
        ]
        assert accuracy == pytest.approx(np.mean(mine))

    assert not list(workdir.rglob(".tmp-*"))


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("learning_rate", -1, r"'mlp\.learning_rate' must be > 0, got -1"),
        ("hidden_units", 0, r"'mlp\.hidden_units' must be > 0, got 0"),
        ("activation", "tanh", r"'mlp\.activation' must be one of sigmoid, relu"),
    ],
)
def test_bad_params_exit_1_with_one_line_and_write_nothing(
    workdir, key, value, message
):
    set_params(workdir, mlp={key: value})
    done = run_stage(workdir, "mlp_train")

    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mlp_train: error: params.yaml: ")
    assert re.search(message, lines[0]), lines[0]
    assert written(workdir) == []


def test_divergence_exits_1_naming_the_epoch_and_writes_nothing(workdir):
    set_params(
        workdir, mlp={"activation": "relu", "init": "normal", "learning_rate": 1e12}
    )
    done = run_stage(workdir, "mlp_train")

    assert done.returncode == 1
    assert "mlp_train: error: training diverged in epoch 1" in done.stderr
    assert "try a smaller learning_rate" in done.stderr
    assert written(workdir) == []


def test_test_stage_without_a_model_names_the_file(workdir):
    done = run_stage(workdir, "mlp_test")

    assert done.returncode == 1
    assert done.stderr.startswith("mlp_test: error: data/mlp/model.npz: cannot read")
    assert written(workdir) == []


def test_missing_training_data_names_the_file(workdir):
    (workdir / "data" / "prepared" / "train_labels.npy").unlink()
    done = run_stage(workdir, "mlp_train")

    assert done.returncode == 1
    assert "data/prepared/train_labels.npy: cannot read" in done.stderr
    assert written(workdir) == []
