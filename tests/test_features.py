"""Image descriptors (features.py): layout, shapes, references, hand cases."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.feature import hog

from cifar_baselines.features import (
    KINDS,
    color_histograms,
    compute_features,
    feature_dim,
    to_images,
)
from cifar_baselines.params import SCHEMA, ParamsError, defaults, validate


def _rows(n_images: int, seed: int = 0) -> np.ndarray:
    """Random uint8 pixel rows of shape (n_images, 3072)."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n_images, 3072), dtype=np.uint8)


def _rows_of(images: np.ndarray) -> np.ndarray:
    """CIFAR rows (n, 3072) of channel-last uint8 images (n, 32, 32, 3)."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2)).reshape(len(images), -1)


def test_to_images_follows_the_cifar_layout() -> None:
    rows = _rows(2)

    images = to_images(rows)

    assert images.shape == (2, 32, 32, 3)
    for n, y, x, c in [(0, 0, 0, 0), (1, 5, 17, 1), (0, 31, 31, 2), (1, 0, 31, 2)]:
        assert images[n, y, x, c] == rows[n, c * 1024 + y * 32 + x]
    assert np.shares_memory(images, rows)


def test_to_images_rejects_other_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(n_images, 3072\), got shape \(2, 3071\)"):
        to_images(np.zeros((2, 3071), dtype=np.uint8))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"orientations": 6, "pixels_per_cell": 4, "cells_per_block": 3, "bins": 7},
    ],
)
def test_features_have_the_documented_shape_and_dtype(kind: str, options) -> None:
    rows = _rows(5)

    features = compute_features(rows, kind=kind, n_jobs=1, **options)

    assert features.dtype == np.float32
    assert features.shape == (5, feature_dim(kind, **options))
    assert np.all(np.isfinite(features))


def test_documented_dimensions() -> None:
    # 4 cells of 8 pixels per side, 3 blocks of 2 x 2 cells per side, 9 bins.
    assert feature_dim("hog") == 3 * 3 * 2 * 2 * 9
    assert feature_dim("color_hist", bins=10) == 30
    assert feature_dim("hog+color_hist") == 324 + 30
    assert feature_dim("raw") == 3072
    # 8 cells of 4 pixels, 6 blocks of 3 x 3 cells per side, 6 bins.
    assert feature_dim("hog", orientations=6, pixels_per_cell=4, cells_per_block=3) == (
        6 * 6 * 3 * 3 * 6
    )


def test_no_images_give_an_empty_array() -> None:
    features = compute_features(np.zeros((0, 3072), dtype=np.uint8), kind="hog")

    assert features.shape == (0, 324)
    assert features.dtype == np.float32


def test_raw_features_are_the_pixels_as_float32() -> None:
    rows = _rows(4)

    features = compute_features(rows, kind="raw", n_jobs=1)

    np.testing.assert_array_equal(features, rows.astype(np.float32))


def test_hog_equals_skimage_on_the_colour_image() -> None:
    rows = _rows(3, seed=1)
    image = to_images(rows)[1]

    expected = hog(
        image,
        orientations=7,
        pixels_per_cell=(4, 4),
        cells_per_block=(2, 2),
        block_norm="L2-Hys",
        channel_axis=-1,
    )
    features = compute_features(
        rows, kind="hog", orientations=7, pixels_per_cell=4, cells_per_block=2, n_jobs=1
    )

    np.testing.assert_allclose(features[1], expected, rtol=1e-6, atol=1e-7)


def test_a_plain_red_image_puts_all_mass_in_one_bin_per_channel() -> None:
    # Pure red: hue 0, saturation 1, value 1.
    images = np.zeros((1, 32, 32, 3), dtype=np.uint8)
    images[..., 0] = 255

    hist = color_histograms(images, bins=4)

    hue, sat, val = hist[0, :4], hist[0, 4:8], hist[0, 8:]
    np.testing.assert_array_equal(hue, [1, 0, 0, 0])
    np.testing.assert_array_equal(sat, [0, 0, 0, 1])
    np.testing.assert_array_equal(val, [0, 0, 0, 1])


def test_colour_histogram_of_a_half_red_half_blue_image() -> None:
    # Hue of red is 0 (bin 0 of 3), of blue 2/3 (bin 2): half of the mass each.
    images = np.zeros((1, 32, 32, 3), dtype=np.uint8)
    images[0, :16, :, 0] = 255
    images[0, 16:, :, 2] = 255

    hist = compute_features(_rows_of(images), kind="color_hist", bins=3, n_jobs=1)

    np.testing.assert_array_equal(hist[0], [0.5, 0, 0.5, 0, 0, 1, 0, 0, 1])


def test_grey_pixels_count_in_the_first_hue_bin() -> None:
    # Grey 128: hue 0 (by convention), saturation 0, value 128/255 -> bin 1 of 2.
    images = np.full((1, 32, 32, 3), 128, dtype=np.uint8)

    hist = color_histograms(images, bins=2)

    np.testing.assert_array_equal(hist[0], [1, 0, 1, 0, 0, 1])


def test_histograms_sum_to_one_per_channel() -> None:
    hist = compute_features(_rows(6), kind="color_hist", bins=5, n_jobs=1)

    np.testing.assert_allclose(hist.reshape(6, 3, 5).sum(axis=2), 1, rtol=1e-6)


def test_the_combination_is_hog_then_colour_histogram() -> None:
    rows = _rows(4, seed=2)

    both = compute_features(rows, kind="hog+color_hist", n_jobs=1)
    hog_part = compute_features(rows, kind="hog", n_jobs=1)
    colour_part = compute_features(rows, kind="color_hist", n_jobs=1)

    np.testing.assert_array_equal(both, np.hstack([hog_part, colour_part]))


def test_a_process_pool_keeps_the_row_order() -> None:
    # Different images in every row, so any reordering would show.
    rows = _rows(11, seed=3)
    calls: list[int] = []

    serial = compute_features(rows, kind="hog+color_hist", n_jobs=1)
    pooled = compute_features(
        rows, kind="hog+color_hist", n_jobs=2, chunk_size=3, progress=calls.append
    )

    np.testing.assert_array_equal(pooled, serial)
    assert sorted(calls) == [2, 3, 3, 3]


def test_progress_is_called_once_per_chunk() -> None:
    calls: list[int] = []

    compute_features(
        _rows(7), kind="color_hist", n_jobs=1, chunk_size=3, progress=calls.append
    )

    assert calls == [3, 3, 1]


@pytest.mark.parametrize(
    ("rows", "options", "message"),
    [
        (
            np.zeros((2, 3072), dtype=np.float32),
            {},
            r"uint8 pixel rows of shape \(n_images, 3072\), got float32 array of "
            r"shape \(2, 3072\)",
        ),
        (
            np.zeros((2, 32, 32, 3), dtype=np.uint8),
            {},
            r"got uint8 array of shape \(2, 32, 32, 3\)",
        ),
        (_rows(1), {"kind": "sift"}, r"kind must be one of raw, hog, .*got 'sift'"),
        (_rows(1), {"kind": "hog", "pixels_per_cell": 33}, r"between 1 and 32, got 33"),
        (
            _rows(1),
            {"kind": "hog", "pixels_per_cell": 16, "cells_per_block": 3},
            r"the 2 cells per side that pixels_per_cell=16 gives, got 3",
        ),
        (_rows(1), {"kind": "color_hist", "bins": 0}, r"bins must be >= 1, got 0"),
        (_rows(1), {"n_jobs": 0}, r"n_jobs must be >= 1, got 0"),
        (_rows(1), {"chunk_size": 0}, r"chunk_size must be >= 1, got 0"),
    ],
)
def test_bad_input_is_named(rows: np.ndarray, options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        compute_features(rows, **options)


def test_hog_sizes_are_checked_only_for_a_kind_that_uses_hog() -> None:
    assert feature_dim("color_hist", pixels_per_cell=64, cells_per_block=9) == 30
    assert compute_features(_rows(2), kind="raw", cells_per_block=9).shape == (2, 3072)
    with pytest.raises(ValueError, match=r"cells_per_block must be between 1 and"):
        feature_dim("hog+color_hist", cells_per_block=9)


def test_params_offer_exactly_the_implemented_kinds() -> None:
    assert SCHEMA["features"]["kind"].choices == KINDS


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("kind", "hog+raw", r"'features.kind' must be one of raw, hog"),
        ("hog_pixels_per_cell", 0, r"'features.hog_pixels_per_cell' must be > 0"),
        ("color_bins", 2.5, r"'features.color_bins' must be an integer"),
    ],
)
def test_features_params_are_checked(key: str, value: object, message: str) -> None:
    params = defaults()
    params["features"][key] = value

    with pytest.raises(ParamsError, match=message):
        validate(params)
