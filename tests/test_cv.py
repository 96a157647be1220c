"""Cross-validation (cv.py): folds, kNN against scikit-learn, memory, grid."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest
from sklearn.neighbors import KNeighborsClassifier

from cifar_baselines import cv, knn
from cifar_baselines.params import ParamsError, defaults, validate


def _blobs(n_per_class: int, n_classes: int = 3, n_features: int = 4, seed: int = 0):
    """Overlapping Gaussian classes: features (n, n_features) float64, labels (n,)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), n_per_class)
    centres = rng.normal(size=(n_classes, n_features))
    features = centres[labels] + rng.normal(size=(len(labels), n_features))
    order = rng.permutation(len(labels))
    return features[order], labels[order].astype(np.int64)


# --- stratified_folds --------------------------------------------------------------


def test_two_folds_of_a_hand_made_set_hold_one_of_each_class() -> None:
    labels = np.array([0, 1, 0, 1])

    folds = cv.stratified_folds(labels, 2, seed=0)

    assert folds.dtype == np.int64
    for f in (0, 1):
        assert sorted(labels[folds == f]) == [0, 1]


@pytest.mark.parametrize(("n_folds", "seed"), [(2, 0), (5, 1), (7, 2)])
def test_folds_are_disjoint_covering_and_stratified(n_folds: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.choice(4, size=203, p=[0.1, 0.2, 0.3, 0.4])

    folds = cv.stratified_folds(labels, n_folds, seed=seed)

    # One fold per sample (disjoint), every fold used (covering).
    assert folds.shape == labels.shape
    assert set(np.unique(folds)) == set(range(n_folds))

    # Each class spread evenly, and fold sizes within one of each other.
    sizes = np.bincount(folds, minlength=n_folds)
    assert sizes.max() - sizes.min() <= 1
    for c in range(4):
        per_fold = np.bincount(folds[labels == c], minlength=n_folds)
        assert per_fold.max() - per_fold.min() <= 1


def test_folds_depend_on_the_seed_only() -> None:
    labels = np.tile(np.arange(3), 20)

    first = cv.stratified_folds(labels, 4, seed=3)

    np.testing.assert_array_equal(cv.stratified_folds(labels, 4, seed=3), first)
    assert not np.array_equal(cv.stratified_folds(labels, 4, seed=4), first)


@pytest.mark.parametrize(
    ("labels", "n_folds", "error", "message"),
    [
        (np.array([0, 0, 1, 1]), 1, ValueError, r"n_folds must be at least 2, got 1"),
        (np.array([0, 0, 1, 1]), 2.0, TypeError, r"n_folds must be an integer"),
        (
            np.array([0, 0, 0, 1, 1]),
            3,
            ValueError,
            r"needs at least 3 samples of every class, but class 1 has 2 samples",
        ),
        (
            np.array([0.0, 1.0]),
            2,
            ValueError,
            r"labels must be integers of shape \(n_samples,\), got float64 array",
        ),
        (np.zeros(0, dtype=np.int64), 2, ValueError, r"but no samples"),
    ],
)
def test_bad_folds_are_named(labels, n_folds, error, message) -> None:
    with pytest.raises(error, match=message):
        cv.stratified_folds(labels, n_folds, seed=0)


# --- kNN -----------------------------------------------------------------------------


def test_choose_k_takes_the_best_mean_and_the_smallest_k_on_a_tie() -> None:
    assert cv.choose_k([1, 3, 5], np.array([0.6, 0.7, 0.7])) == 3
    assert cv.choose_k([1, 3, 5], np.array([0.6, 0.7, 0.8])) == 5
    assert cv.choose_k([5, 3, 1], np.array([0.7, 0.7, 0.6])) == 3


def test_choose_k_needs_one_mean_per_k() -> None:
    with pytest.raises(ValueError, match=r"shape \(3,\), one value per k, got shape"):
        cv.choose_k([1, 3, 5], np.array([0.6, 0.7]))


def test_knn_cv_equals_scikit_learn_on_every_fold() -> None:
    features, labels = _blobs(20)
    k_values = [1, 2, 3, 7, 15]

    result = cv.knn_cv(features, labels, k_values, n_folds=4, seed=5)

    folds = cv.stratified_folds(labels, 4, seed=5)
    expected = np.empty((4, len(k_values)))
    for f in range(4):
        rest, held = folds != f, folds == f
        for j, k in enumerate(k_values):
            ref = KNeighborsClassifier(n_neighbors=k, algorithm="brute")
            ref.fit(features[rest], labels[rest])
            expected[f, j] = ref.score(features[held], labels[held])
    np.testing.assert_allclose(result.fold_accuracy, expected, rtol=1e-12)
    np.testing.assert_allclose(result.mean, expected.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(result.std, expected.std(axis=0, ddof=1), rtol=1e-12)
    assert result.best_k == cv.choose_k(k_values, expected.mean(axis=0))
    assert result.fold_sizes == tuple(np.bincount(folds))


def test_knn_cv_sorts_k_and_reports_plain_json() -> None:
    features, labels = _blobs(10)

    result = cv.knn_cv(features, labels, [5, 1, 3], n_folds=2, seed=0)
    report = json.loads(json.dumps(result.to_dict()))

    assert result.k_values == (1, 3, 5)
    assert [row["k"] for row in report["k"]] == [1, 3, 5]
    assert report["best_k"] == result.best_k
    assert report["folds"] == 2
    assert report["k"][1]["folds"] == list(result.fold_accuracy[:, 1])


def test_knn_cv_never_holds_a_block_over_budget(monkeypatch) -> None:
    features, labels = _blobs(30, n_features=6)
    n_train = len(labels)
    requested: list[tuple[int, int]] = []
    real_distance_matrix = knn.distance_matrix

    def spy(a, b, **kwargs):
        requested.append((len(a), len(b)))
        return real_distance_matrix(a, b, **kwargs)

    budget_mib = 2_000 / cv.MIB  # 2,000 bytes: 6 fold rows of 72 distances
    whole = cv.knn_cv(features, labels, [1, 4, 9], n_folds=5, seed=0)
    monkeypatch.setattr(knn, "distance_matrix", spy)
    chunked = cv.knn_cv(
        features, labels, [1, 4, 9], n_folds=5, seed=0, chunk_mib=budget_mib
    )

    # Same accuracies, from several blocks per fold, none above the budget
    # and none against the whole training set.
    np.testing.assert_array_equal(chunked.fold_accuracy, whole.fold_accuracy)
    assert len(requested) > 5
    for rows, n_rest in requested:
        assert n_rest == n_train - n_train // 5
        assert rows * n_rest * 4 <= 2_000
    assert sum(rows for rows, _ in requested) == n_train


def test_progress_adds_up_to_the_training_set() -> None:
    features, labels = _blobs(12)
    calls: list[int] = []

    cv.knn_cv(features, labels, [1, 2], n_folds=3, seed=0, progress=calls.append)

    assert sum(calls) == len(labels)


def test_the_cv_choice_reads_training_data_only(monkeypatch) -> None:
    # No parameter could carry the test split ...
    for function in (cv.knn_cv, cv.mlp_cv, cv.stratified_folds, cv.choose_k):
        names = inspect.signature(function).parameters
        assert not any("test" in name for name in names), function.__name__

    # ... and every row the distances are computed from is a training row.
    features, labels = _blobs(10)
    train_rows = {row.tobytes() for row in features}
    seen: list[np.ndarray] = []
    real_distance_matrix = knn.distance_matrix

    def spy(a, b, **kwargs):
        seen.extend([a, b])
        return real_distance_matrix(a, b, **kwargs)

    monkeypatch.setattr(knn, "distance_matrix", spy)
    cv.knn_cv(features, labels, [1, 3], n_folds=3, seed=0)

    assert all(row.tobytes() in train_rows for array in seen for row in array)


@pytest.mark.parametrize(
    ("k_values", "message"),
    [
        ([], r"k_values must be distinct and not empty"),
        ([1, 1], r"k_values must be distinct and not empty"),
        ([0, 2], r"every k must be in 1\.\.20 \(the smallest set of samples"),
        ([21], r"every k must be in 1\.\.20"),
    ],
)
def test_bad_k_values_are_named(k_values, message) -> None:
    features, labels = _blobs(10)  # 30 samples, 3 folds of 10: rests of 20

    with pytest.raises(ValueError, match=message):
        cv.knn_cv(features, labels, k_values, n_folds=3, seed=0)


def test_features_and_labels_must_match() -> None:
    features, labels = _blobs(10)

    with pytest.raises(
        ValueError,
        match=r"features_train of shape \(29, 4\) and labels_train of shape \(30,\)",
    ):
        cv.knn_cv(features[:-1], labels, [1], n_folds=3, seed=0)


# --- MLP grid ------------------------------------------------------------------------


def test_grid_points_vary_the_last_name_fastest() -> None:
    points = cv.grid_points({"hidden_units": [64, 256], "learning_rate": [0.01, 0.1]})

    assert points == (
        {"hidden_units": 64, "learning_rate": 0.01},
        {"hidden_units": 64, "learning_rate": 0.1},
        {"hidden_units": 256, "learning_rate": 0.01},
        {"hidden_units": 256, "learning_rate": 0.1},
    )


def test_an_empty_grid_is_refused() -> None:
    with pytest.raises(ValueError, match=r"non-empty list, got \{'a': \[\]\}"):
        cv.grid_points({"a": []})


def test_mlp_cv_trains_on_the_rest_and_scores_on_the_fold() -> None:
    features, labels = _blobs(8, n_features=2)
    features[:, 0] = np.arange(len(labels))  # column 0 identifies a sample
    held_out: list[np.ndarray] = []

    def train_fn(x_fit, y_fit, x_val, y_val, *, shift, scale):
        fit_ids, val_ids = set(x_fit[:, 0]), set(x_val[:, 0])
        assert not fit_ids & val_ids
        assert len(fit_ids | val_ids) == len(labels)
        if shift == 0:
            held_out.append(x_val[:, 0])
        # A made-up accuracy that depends on the fold and on the point.
        return (shift + scale + len(y_val) % 3) / 10

    result = cv.mlp_cv(
        features,
        labels,
        {"shift": [0, 2], "scale": [1, 3]},
        n_folds=4,
        seed=0,
        train_fn=train_fn,
    )

    # Each sample held out once per grid point with shift 0 (two of them).
    ids = np.sort(np.concatenate(held_out))
    np.testing.assert_array_equal(ids, np.repeat(np.arange(len(labels)), 2))
    assert result.fold_accuracy.shape == (4, 4)
    np.testing.assert_allclose(result.mean, result.fold_accuracy.mean(axis=1))
    np.testing.assert_allclose(result.std, result.fold_accuracy.std(axis=1, ddof=1))
    assert result.best_point == {"shift": 2, "scale": 3}


def test_mlp_cv_takes_the_first_point_on_a_tie() -> None:
    features, labels = _blobs(6)
    table = {(64, 0.1): 0.5, (64, 0.01): 0.7, (256, 0.1): 0.7, (256, 0.01): 0.6}

    def train_fn(x_fit, y_fit, x_val, y_val, *, hidden_units, learning_rate):
        return table[hidden_units, learning_rate]

    grid = {"hidden_units": [64, 256], "learning_rate": [0.1, 0.01]}
    result = cv.mlp_cv(features, labels, grid, n_folds=3, seed=0, train_fn=train_fn)
    report = json.loads(json.dumps(result.to_dict()))

    assert result.best_index == 1
    assert report["best"] == {"hidden_units": 64, "learning_rate": 0.01}
    assert report["grid"][2]["mean"] == pytest.approx(0.7)
    assert report["grid"][2]["std"] == pytest.approx(0, abs=1e-12)


def test_mlp_cv_refuses_a_result_that_is_not_an_accuracy() -> None:
    features, labels = _blobs(6)

    with pytest.raises(ValueError, match=r"accuracy in \[0, 1\], got 42.0 for"):
        cv.mlp_cv(
            features,
            labels,
            {"units": [8]},
            n_folds=2,
            seed=0,
            train_fn=lambda *data, units: 42,
        )


class _Diverged(Exception):
    pass


def test_mlp_cv_skips_a_point_whose_training_fails() -> None:
    features, labels = _blobs(6)
    calls: list[tuple[int, float]] = []
    progress: list[int] = []

    def train_fn(x_fit, y_fit, x_val, y_val, *, units, lr):
        calls.append((units, lr))
        if (units, lr) == (8, 10.0) and calls.count((8, 10.0)) == 2:
            raise _Diverged("loss is inf in epoch 1")  # on fold 1
        return 0.9 if lr > 1 else 0.4 + units / 100

    grid = {"units": [8, 16], "lr": [0.1, 10.0]}
    result = cv.mlp_cv(
        features,
        labels,
        grid,
        n_folds=3,
        seed=0,
        train_fn=train_fn,
        skip_errors=(_Diverged,),
        progress=progress.append,
    )
    report = json.loads(json.dumps(result.to_dict()))

    # (8, 10.0) fails on fold 1 and is not trained on fold 2; the best mean
    # (0.9) is then (16, 10.0), not the point that failed after a 0.9.
    assert calls.count((8, 10.0)) == 2
    assert all(calls.count(p) == 3 for p in [(8, 0.1), (16, 0.1), (16, 10.0)])
    assert sum(progress) == 3 * 4
    assert result.best_point == {"units": 16, "lr": 10.0}
    assert result.failures == (None, "fold 1: loss is inf in epoch 1", None, None)
    assert np.isnan(result.mean[1]) and np.isnan(result.std[1])
    assert report["grid"][1]["mean"] is None
    assert report["grid"][1]["folds"][0] == pytest.approx(0.9)
    assert report["grid"][1]["folds"][1:] == [None, None]
    assert report["grid"][1]["failed"] == "fold 1: loss is inf in epoch 1"
    assert report["grid"][2]["failed"] is None
    assert report["grid"][2]["mean"] == pytest.approx(0.56)
    assert report["best_mean_accuracy"] == pytest.approx(0.9)


def test_mlp_cv_lets_other_errors_through_and_refuses_all_failed() -> None:
    features, labels = _blobs(6)

    def train_fn(x_fit, y_fit, x_val, y_val, *, units):
        raise _Diverged(f"diverged with {units} units")

    with pytest.raises(_Diverged, match="diverged with 8 units"):
        cv.mlp_cv(features, labels, {"units": [8]}, 2, 0, train_fn)
    with pytest.raises(
        ValueError,
        match=r"every grid point failed; \{'units': 8\}: fold 0: diverged with 8",
    ):
        cv.mlp_cv(
            features,
            labels,
            {"units": [8, 9]},
            2,
            0,
            train_fn,
            skip_errors=(_Diverged,),
        )


# --- params -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("folds", 1, r"'cv.folds' must be 0 \(no cross-validation\) or at least 2"),
        ("folds", -3, r"'cv.folds' must be 0"),
        ("mlp_learning_rates", ["fast"], r"'cv.mlp_learning_rates' must be a list of"),
        ("mlp_learning_rates", [0.1, True], r"must be a list of finite numbers"),
        ("mlp_learning_rates", [0.1, float("nan")], r"must be a list of finite"),
        ("mlp_learning_rates", [], r"'cv.mlp_learning_rates' must list at least"),
        ("mlp_learning_rates", [0.1, 0.0], r"must hold only values > 0, got 0.0"),
        ("mlp_hidden_units", [64, 64], r"'cv.mlp_hidden_units' must not repeat"),
        ("mlp_hidden_units", [64.5], r"'cv.mlp_hidden_units' must be a list of int"),
    ],
)
def test_cv_params_are_checked(key: str, value: object, message: str) -> None:
    params = defaults()
    params["cv"][key] = value

    with pytest.raises(ParamsError, match=message):
        validate(params)


def test_a_float_list_accepts_integers_as_floats() -> None:
    params = defaults()
    params["cv"]["mlp_learning_rates"] = [1, 0.5]

    clean = validate(params)

    assert clean["cv"]["mlp_learning_rates"] == [1.0, 0.5]
    assert all(type(v) is float for v in clean["cv"]["mlp_learning_rates"])
