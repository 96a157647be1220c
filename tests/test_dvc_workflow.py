"""The DVC workflow users come for, run for real on tiny fixture data.

Each test builds a throw-away copy of the project (``project_copy``), points
``data.url`` at the tiny archive and drives ``dvc`` as a user would: metrics
compared across branches, an experiment, and a cache shared through a remote.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow


def sh(project: Path, env: dict[str, str], *args: str) -> str:
    """Run a command in ``project``; fail the test with its output if it fails."""
    done = subprocess.run(args, cwd=project, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(args)} exited {done.returncode}:\n{done.stderr}")
    return done.stdout


def git(project: Path, env: dict[str, str], *args: str) -> str:
    return sh(
        project, env, "git", "-c", "user.name=t", "-c", "user.email=t@localhost", *args
    )


def set_param(project: Path, section: str, key: str, value: object) -> None:
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text(encoding="utf-8"))
    params[section][key] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")


@pytest.fixture
def tiny_project(project_copy, tiny_cifar, pipeline_env) -> Path:
    """A project copy on the tiny archive, reproduced and committed on ``main``."""
    project = project_copy(
        {
            "data.url": str(tiny_cifar.archive),
            "data.md5": tiny_cifar.md5,
            "knn.k_values": [1, 3, 5],
            "mlp.epochs": 3,
        }
    )
    git(project, pipeline_env, "branch", "-M", "main")
    sh(project, pipeline_env, "dvc", "repro")
    git(project, pipeline_env, "add", "-A")
    git(project, pipeline_env, "commit", "-q", "-m", "results on tiny data")
    return project


def test_metrics_diff_between_branches_needs_no_checkout(tiny_project, pipeline_env):
    project, env = tiny_project, pipeline_env
    git(project, env, "checkout", "-q", "-b", "wider")
    set_param(project, "mlp", "hidden_units", 48)
    sh(project, env, "dvc", "repro")
    git(project, env, "commit", "-q", "-am", "wider hidden layer")
    git(project, env, "checkout", "-q", "main")

    diff = json.loads(
        sh(project, env, "dvc", "metrics", "diff", "main", "wider", "--all", "--json")
    )

    old = json.loads(git(project, env, "show", "main:results/mlp/metrics.json"))
    new = json.loads(git(project, env, "show", "wider:results/mlp/metrics.json"))
    # On 30 tiny test images both branches may score the same accuracy; the
    # loss always moves.  --all lists unchanged values too.
    assert old["test_loss"] != new["test_loss"]
    entry = diff["results/mlp/metrics.json"]
    for key in ("test_accuracy", "test_loss"):
        assert entry[key]["old"] == pytest.approx(old[key])
        assert entry[key]["new"] == pytest.approx(new[key])
        assert entry[key]["diff"] == pytest.approx(new[key] - old[key])
    # The branch changed only an MLP param: the kNN metrics are the same.
    knn = diff["results/knn/metrics.json"]
    assert knn["best_accuracy"]["diff"] == 0
    # Nothing was checked out: the workspace is still main, clean.
    assert git(project, env, "rev-parse", "--abbrev-ref", "HEAD").strip() == "main"
    assert git(project, env, "status", "--porcelain") == ""


def test_experiment_run_and_show(tiny_project, pipeline_env):
    project, env = tiny_project, pipeline_env

    sh(
        project,
        env,
        "dvc",
        "exp",
        "run",
        "-n",
        "slow-lr",
        "-S",
        "mlp.learning_rate=0.01",
    )
    rows = json.loads(sh(project, env, "dvc", "exp", "show", "--json"))

    exps = [
        exp
        for row in rows
        for exp in row.get("experiments") or []
        if exp.get("name") == "slow-lr"
    ]
    assert len(exps) == 1
    data = exps[0]["revs"][0]["data"]
    assert data["params"]["params.yaml"]["data"]["mlp"]["learning_rate"] == 0.01
    metrics = data["metrics"]["results/mlp/metrics.json"]["data"]
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    # The experiment changed only MLP params: the kNN stages were not re-run,
    # so its kNN metrics equal the committed ones.
    knn = data["metrics"]["results/knn/metrics.json"]["data"]
    assert knn == json.loads((project / "results/knn/metrics.json").read_text())


def test_a_descriptor_key_the_kind_does_not_use_reruns_features_alone(
    tiny_project, pipeline_env
):
    project, env = tiny_project, pipeline_env
    set_param(project, "features", "color_bins", 4)  # features.kind is raw

    out = sh(project, env, "dvc", "repro")

    # The stage writes the same bytes, so no stage after it runs again.
    assert re.findall(r"Running stage '([^']+)'", out) == ["features"]


def test_teammate_pulls_the_cache_and_has_nothing_to_run(
    tiny_project, pipeline_env, tmp_path
):
    project, env = tiny_project, pipeline_env
    remote = tmp_path / "cifar-baselines-dvc-remote"
    # The committed example remote is a folder beside the repository.
    assert (project / ".." / "cifar-baselines-dvc-remote").resolve() == remote

    sh(project, env, "dvc", "push")
    assert any(remote.rglob("*")), "nothing was pushed"

    clone = tmp_path / "teammate"
    sh(tmp_path, env, "git", "clone", "-q", str(project), str(clone))
    assert not (clone / "data/knn/distances.npy").exists()
    sh(clone, env, "dvc", "pull")

    assert (clone / "data/knn/distances.npy").exists()
    status = sh(clone, env, "dvc", "status")
    assert "up to date" in status
    repro = sh(clone, env, "dvc", "repro")
    assert "Running stage" not in repro
