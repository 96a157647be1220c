"""Shared fixtures: a tiny CIFAR-10 archive in the official format, and a
temporary copy of the project in which DVC can run.

``tiny_cifar``
    Six batches of :data:`N_PER_BATCH` random images written exactly as the
    official archive is (Python 2 pickles at protocol 2, bytes keys, the
    ``numpy.core`` name for array reconstruction), packed as
    ``cifar-10-batches-py/`` in a ``.tar.gz``.  Session-wide: do not modify it.
``project_copy``
    A function ``project_copy(overrides={"data.url": ..., ...})`` that copies
    the project into a fresh git + DVC repository and returns its path.
``pipeline_env``
    Environment for subprocesses: the virtualenv's ``bin`` first on ``PATH``
    (so ``python stages/...`` and ``dvc`` are the project's), no DVC analytics.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from cifar_baselines.params import validate
from cifar_baselines.read_cifar import BATCH_NAMES, CLASS_NAMES, N_FEATURES

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
N_PER_BATCH = 50


def run_stage(workdir: Path, name: str) -> subprocess.CompletedProcess:
    """Run ``stages/<name>.py`` in ``workdir`` with this interpreter."""
    return subprocess.run(
        [sys.executable, str(REPO / "stages" / f"{name}.py")],
        cwd=workdir,
        capture_output=True,
        text=True,
    )


def set_params(workdir: Path, **sections: dict[str, Any]) -> None:
    """Set keys in ``workdir/params.yaml``: ``set_params(d, mlp={"epochs": 3})``."""
    path = workdir / "params.yaml"
    params = yaml.safe_load(path.read_text(encoding="utf-8"))
    for section, values in sections.items():
        params[section].update(values)
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")


def stage_workdir(
    workdir: Path, n_train: int, n_test: int, **sections: dict[str, Any]
) -> Path:
    """Make ``workdir`` ready for the stages after ``features``.

    Writes the repository's ``params.yaml`` with ``sections`` set, random
    uint8 images and shuffled, balanced labels in ``data/prepared``, and the
    same images in ``data/features``, as ``features.kind: raw`` writes them.
    Returns ``workdir``.
    """
    (workdir / "params.yaml").write_text(
        (REPO / "params.yaml").read_text(encoding="utf-8"), encoding="utf-8"
    )
    set_params(workdir, **sections)
    rng = np.random.default_rng(0)
    prepared = workdir / "data" / "prepared"
    features = workdir / "data" / "features"
    prepared.mkdir(parents=True)
    features.mkdir(parents=True)
    for part, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, size=(n, N_FEATURES), dtype=np.uint8)
        labels = rng.permutation(np.arange(n) % len(CLASS_NAMES)).astype(np.int64)
        np.save(prepared / f"{part}_images.npy", images)
        np.save(features / f"{part}_features.npy", images)
        np.save(prepared / f"{part}_labels.npy", labels)
    return workdir


_RECONSTRUCT = np.empty(0).__reduce__()[0]


class Py2Pickler(pickle._Pickler):
    """Pickle as Python 2 did for the official batches.

    ``bytes`` and ``str`` become Python 2 ``str`` (``SHORT_BINSTRING`` /
    ``BINSTRING``) instead of Python 3's ``_codecs.encode`` calls, and array
    reconstruction is named ``numpy.core.multiarray._reconstruct``.  Built on
    the pure-Python pickler (``pickle._Pickler``) because only it lets a
    subclass change how one type is written.
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj: bytes | str) -> None:
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + struct.pack("<B", len(raw)) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str

    def save_global(self, obj: Any, name: str | None = None) -> None:
        if obj is _RECONSTRUCT:
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)


def dump_pickle(obj: Any, path: Path, *, style: str = "py2") -> None:
    """Write ``obj`` at protocol 2: as Python 2 wrote it (``"py2"``, the
    official archive) or as Python 3 writes it (``"py3"``)."""
    with path.open("wb") as f:
        if style == "py2":
            Py2Pickler(f, protocol=2).dump(obj)
        else:
            pickle.dump(obj, f, protocol=2)


def random_images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random images, uint8 of shape (n, 3072), and int64 labels with
    every class equally often (up to ``n % 10``)."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, N_FEATURES), dtype=np.uint8)
    labels = rng.permutation(np.arange(n) % len(CLASS_NAMES)).astype(np.int64)
    return data, labels


def write_batch(
    path: Path, data: np.ndarray, labels: np.ndarray, *, style: str = "py2"
) -> None:
    """Write one batch file in the official layout."""
    batch = {
        b"batch_label": f"batch {path.name}".encode(),
        b"labels": [int(label) for label in labels],
        b"data": data,
        b"filenames": [f"image_{i:05d}.png".encode() for i in range(len(data))],
    }
    dump_pickle(batch, path, style=style)


def write_cifar_folder(
    folder: Path,
    data: np.ndarray,
    labels: np.ndarray,
    *,
    sizes: list[int] | None = None,
    style: str = "py2",
) -> Path:
    """Cut ``data`` into the six batches (``sizes`` rows each, default equal)
    and write them with ``batches.meta`` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    sizes = sizes or [len(data) // len(BATCH_NAMES)] * len(BATCH_NAMES)
    bounds = np.cumsum([0, *sizes])
    for name, start, stop in zip(BATCH_NAMES, bounds[:-1], bounds[1:], strict=True):
        write_batch(folder / name, data[start:stop], labels[start:stop], style=style)

    meta = {
        b"num_cases_per_batch": sizes[0],
        b"label_names": [name.encode() for name in CLASS_NAMES],
        b"num_vis": N_FEATURES,
    }
    dump_pickle(meta, folder / "batches.meta", style=style)
    return folder


def pack_folder(folder: Path, archive: Path) -> str:
    """Pack ``folder`` as ``cifar-10-batches-py/`` into a .tar.gz; return its md5."""
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    return hashlib.md5(archive.read_bytes()).hexdigest()


@dataclass(frozen=True)
class TinyCifar:
    """A tiny archive and what it holds.

    Attributes
    ----------
    archive : Path
        The ``.tar.gz``.
    md5 : str
        Its checksum.
    folder : Path
        The same batches unpacked (``cifar-10-batches-py``).
    data : ndarray of shape (6 * N_PER_BATCH, 3072), dtype uint8
        All images, batch by batch in archive order.
    labels : ndarray of shape (6 * N_PER_BATCH,), dtype int64
    """

    archive: Path
    md5: str
    folder: Path
    data: np.ndarray
    labels: np.ndarray


@pytest.fixture(scope="session")
def tiny_cifar(tmp_path_factory: pytest.TempPathFactory) -> TinyCifar:
    root = tmp_path_factory.mktemp("tiny_cifar")
    data, labels = random_images(N_PER_BATCH * len(BATCH_NAMES))
    folder = write_cifar_folder(root / "cifar-10-batches-py", data, labels)
    archive = root / "cifar-10-python.tar.gz"
    md5 = pack_folder(folder, archive)
    data.setflags(write=False)
    labels.setflags(write=False)
    return TinyCifar(archive, md5, folder, data, labels)


@pytest.fixture
def pipeline_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"
    env.pop("PYTHONPATH", None)
    return env


def _project_files() -> list[str]:
    """Files git tracks, plus new ones it does not ignore (work not yet
    committed is tested too)."""
    listing = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout
    return sorted({os.fsdecode(name) for name in listing.split(b"\0") if name})


def _git(project: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=tests", "-c", "user.email=tests@localhost", *args],
        cwd=project,
        check=True,
        capture_output=True,
    )


@pytest.fixture
def project_copy(tmp_path: Path) -> Callable[..., Path]:
    """Return ``make(overrides=None, name="project")`` building a project copy.

    ``overrides`` maps ``"section.key"`` to a value written into the copy's
    ``params.yaml`` (validated).  The copy is a git repository with one commit
    and DVC initialised (from the project's own ``.dvc/config``), with its
    DVC site cache inside ``tmp_path``.
    """

    def make(overrides: dict[str, Any] | None = None, name: str = "project") -> Path:
        project = tmp_path / name
        for rel in _project_files():
            src = REPO / rel
            if src.is_file():
                dst = project / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)

        params_file = project / "params.yaml"
        params = yaml.safe_load(params_file.read_text(encoding="utf-8"))
        for dotted, value in (overrides or {}).items():
            section, _, key = dotted.partition(".")
            params[section][key] = value
        validate(params)
        params_file.write_text(yaml.safe_dump(params, sort_keys=False))

        (project / ".dvc" / "config.local").write_text(
            "[core]\n"
            f"    site_cache_dir = {tmp_path / 'dvc-site-cache'}\n"
            "    analytics = false\n"
            "    check_update = false\n"
        )
        _git(project, "init", "-q")
        _git(project, "add", "-A")
        _git(project, "commit", "-q", "-m", "project copy")
        return project

    return make
