"""The fetch and prepare stage scripts, alone and under ``dvc repro``."""

from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO, TinyCifar

from cifar_baselines.params import defaults
from cifar_baselines.read_cifar import split_dataset

RAW = Path("data/raw/cifar-10-batches-py")
PREPARED = Path("data/prepared")
PREPARED_FILES = [
    "test_images.npy",
    "test_labels.npy",
    "train_images.npy",
    "train_labels.npy",
]


def _write_params(folder: Path, **changes: object) -> None:
    params = defaults()
    for dotted, value in changes.items():
        section, _, key = dotted.partition("__")
        params[section][key] = value
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _stage(name: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "stages" / f"{name}.py")],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _one_error_line(result: subprocess.CompletedProcess, stage: str) -> str:
    """The error line; it must be the last line of stderr and the only one
    about an error (log lines may come before it)."""
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    assert lines and lines[-1].startswith(f"{stage}: error: "), result.stderr
    assert sum("error" in line for line in lines) == 1, result.stderr
    return lines[-1]


# --- stage scripts, run directly ------------------------------------------------


@pytest.mark.parametrize(
    ("stage", "changes", "key"),
    [
        ("fetch", {"data__md5": "not-a-checksum"}, "data.md5"),
        ("fetch", {"data__url": 42}, "data.url"),
        ("prepare", {"split__train_fraction": 1.5}, "split.train_fraction"),
        ("prepare", {"split__seed": "zero"}, "split.seed"),
        ("prepare", {"split__stratify": "no"}, "split.stratify"),
    ],
)
def test_bad_params_fail_before_any_work(
    tmp_path: Path, pipeline_env, stage: str, changes: dict, key: str
) -> None:
    _write_params(tmp_path, **changes)

    result = _stage(stage, tmp_path, pipeline_env)

    line = _one_error_line(result, stage)
    assert f"'{key}'" in line
    assert not (tmp_path / "data").exists()


def test_fetch_unreachable_points_to_offline_use(tmp_path: Path, pipeline_env) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    _write_params(tmp_path, data__url=f"http://127.0.0.1:{port}/cifar.tar.gz")

    result = _stage("fetch", tmp_path, pipeline_env)

    line = _one_error_line(result, "fetch")
    assert "cannot reach 127.0.0.1: connection refused" in line
    assert '"Offline use"' in line
    assert not (tmp_path / RAW).exists()


def test_fetch_md5_mismatch(tmp_path: Path, pipeline_env, tiny_cifar) -> None:
    _write_params(tmp_path, data__url=str(tiny_cifar.archive), data__md5="a" * 32)

    result = _stage("fetch", tmp_path, pipeline_env)

    line = _one_error_line(result, "fetch")
    assert f"expected {'a' * 32}, got {tiny_cifar.md5}" in line
    assert "data.md5" in line
    assert tiny_cifar.archive.is_file()
    assert not (tmp_path / RAW).exists()


def test_fetch_then_prepare(tmp_path: Path, pipeline_env, tiny_cifar) -> None:
    relative = os.path.relpath(tiny_cifar.archive, tmp_path)
    _write_params(tmp_path, data__url=relative, data__md5=tiny_cifar.md5)

    fetched = _stage("fetch", tmp_path, pipeline_env)
    prepared = _stage("prepare", tmp_path, pipeline_env)

    assert fetched.returncode == 0, fetched.stderr
    assert prepared.returncode == 0, prepared.stderr
    assert "unpacked 7 files into data/raw/cifar-10-batches-py" in fetched.stderr
    assert "read 300 images of 3072 values" in prepared.stderr
    assert "train    270 images, per class " in prepared.stderr
    assert "test      30 images, per class " in prepared.stderr
    _check_prepared(tmp_path / PREPARED, tiny_cifar, split=0.9, seed=0)


def test_prepare_refuses_a_hostile_batch(tmp_path: Path, pipeline_env, tiny_cifar):
    _write_params(tmp_path)
    raw = tmp_path / RAW
    raw.mkdir(parents=True)
    for path in tiny_cifar.folder.iterdir():
        (raw / path.name).write_bytes(path.read_bytes())
    marker = tmp_path / "marker"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    (raw / "data_batch_3").write_bytes(pickle.dumps({b"data": Payload()}, protocol=2))

    result = _stage("prepare", tmp_path, pipeline_env)

    line = _one_error_line(result, "prepare")
    assert "data_batch_3: refused to unpickle global posix.system" in line
    assert not marker.exists()
    assert not (tmp_path / PREPARED).exists()


def _check_prepared(folder: Path, tiny: TinyCifar, *, split: float, seed: int) -> None:
    assert sorted(p.name for p in folder.iterdir()) == PREPARED_FILES
    want = split_dataset(tiny.data, tiny.labels, split, seed=seed)
    names = ["train_images", "train_labels", "test_images", "test_labels"]
    for name, expected in zip(names, want, strict=True):
        got = np.load(folder / f"{name}.npy", mmap_mode="r")
        assert got.dtype == (np.uint8 if "images" in name else np.int64)
        np.testing.assert_array_equal(got, expected)


# --- under DVC ----------------------------------------------------------------------


def _dvc(project: Path, env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "dvc"), *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.slow
def test_dvc_repro_prepare(project_copy, pipeline_env, tiny_cifar) -> None:
    project = project_copy({"data.md5": tiny_cifar.md5})
    # A path relative to the repository root, as README's "Offline use" shows.
    relative = os.path.relpath(tiny_cifar.archive, project)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"]["url"] = relative
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    first = _dvc(project, pipeline_env, "repro", "prepare")

    assert "Running stage 'fetch'" in first
    assert "Running stage 'prepare'" in first
    _check_prepared(project / PREPARED, tiny_cifar, split=0.9, seed=0)
    stamps = {p: p.stat().st_mtime_ns for p in (project / PREPARED).iterdir()}

    second = _dvc(project, pipeline_env, "repro", "prepare")
    status = _dvc(project, pipeline_env, "status", "prepare")

    assert "Running stage" not in second
    assert "Stage 'fetch' didn't change, skipping" in second
    assert "Stage 'prepare' didn't change, skipping" in second
    assert "up to date" in status
    assert stamps == {p: p.stat().st_mtime_ns for p in (project / PREPARED).iterdir()}
