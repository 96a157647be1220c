"""The features stage, run as a script on a tiny prepared set."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO, run_stage, set_params

from cifar_baselines import features

SIZES = {"train": 24, "test": 7}
OUT = Path("data/features")


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """The repository's params.yaml and a tiny data/prepared of random images."""
    (tmp_path / "params.yaml").write_text(
        (REPO / "params.yaml").read_text(encoding="utf-8"), encoding="utf-8"
    )
    rng = np.random.default_rng(0)
    prepared = tmp_path / "data" / "prepared"
    prepared.mkdir(parents=True)
    for part, n in SIZES.items():
        images = rng.integers(0, 256, size=(n, features.ROW_LENGTH), dtype=np.uint8)
        np.save(prepared / f"{part}_images.npy", images)
    return tmp_path


def prepared(workdir: Path, part: str) -> Path:
    return workdir / "data" / "prepared" / f"{part}_images.npy"


def described(workdir: Path, part: str) -> Path:
    return workdir / OUT / f"{part}_features.npy"


def test_raw_copies_the_prepared_files_byte_for_byte(workdir):
    done = run_stage(workdir, "features")

    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (workdir / OUT).iterdir()) == [
        "test_features.npy",
        "train_features.npy",
    ]
    for part, n in SIZES.items():
        assert (
            described(workdir, part).read_bytes()
            == prepared(workdir, part).read_bytes()
        )
        array = np.load(described(workdir, part))
        assert array.dtype == np.uint8 and array.shape == (n, features.ROW_LENGTH)


@pytest.mark.parametrize(
    ("kind", "options"),
    [
        ("hog", {"hog_orientations": 6, "hog_pixels_per_cell": 8}),
        # HOG sizes that would not fit are no error for a kind without HOG.
        ("color_hist", {"color_bins": 4, "hog_cells_per_block": 9}),
        ("hog+color_hist", {"hog_cells_per_block": 3, "color_bins": 5}),
    ],
)
def test_descriptors_have_the_documented_shape_dtype_and_row_order(
    workdir, kind, options
):
    set_params(workdir, features={"kind": kind, **options})

    done = run_stage(workdir, "features")

    assert done.returncode == 0, done.stderr
    params = yaml.safe_load((workdir / "params.yaml").read_text())["features"]
    library_options = {
        "orientations": params["hog_orientations"],
        "pixels_per_cell": params["hog_pixels_per_cell"],
        "cells_per_block": params["hog_cells_per_block"],
        "bins": params["color_bins"],
    }
    dim = features.feature_dim(kind, **library_options)
    for part, n in SIZES.items():
        array = np.load(described(workdir, part))
        assert array.dtype == np.float32 and array.shape == (n, dim)
        # Row i describes prepared image i: the library on the same rows, one
        # process, gives the same array.
        expected = features.compute_features(
            np.load(prepared(workdir, part)), kind=kind, **library_options, n_jobs=1
        )
        np.testing.assert_array_equal(array, expected)
    assert not list(workdir.rglob(".tmp-*"))


def test_a_key_the_kind_does_not_use_changes_no_byte(workdir):
    set_params(workdir, features={"kind": "hog", "color_bins": 10})
    assert run_stage(workdir, "features").returncode == 0
    first = {part: described(workdir, part).read_bytes() for part in SIZES}

    set_params(workdir, features={"color_bins": 3})
    assert run_stage(workdir, "features").returncode == 0

    assert {part: described(workdir, part).read_bytes() for part in SIZES} == first


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"hog_pixels_per_cell": 40},
            r"'features\.hog_pixels_per_cell' must be at most 32, the image side, "
            r"got 40",
        ),
        (
            {"hog_pixels_per_cell": 8, "hog_cells_per_block": 5},
            r"'features\.hog_cells_per_block' must be at most 4, the cells per image "
            r"side that 'features\.hog_pixels_per_cell' = 8 gives, got 5",
        ),
        ({"color_bins": 0}, r"'features\.color_bins' must be > 0, got 0"),
    ],
)
def test_bad_descriptor_params_name_the_key_and_write_nothing(
    workdir, options, message
):
    set_params(workdir, features={"kind": "hog+color_hist", **options})

    done = run_stage(workdir, "features")

    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("features: error: params.yaml: ")
    assert re.search(message, lines[0]), lines[0]
    assert not (workdir / OUT).exists()
    assert not list(workdir.rglob(".tmp-*"))


def test_a_missing_prepared_file_is_named(workdir):
    prepared(workdir, "test").unlink()

    done = run_stage(workdir, "features")

    assert done.returncode == 1
    assert done.stderr.strip() == (
        "features: error: data/prepared/test_images.npy: cannot read: "
        "No such file or directory"
    )
    assert not (workdir / OUT).exists()
