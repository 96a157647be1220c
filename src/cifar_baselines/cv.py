"""N-fold cross-validation on the training split.

Hyper-parameters are chosen on folds of the training split only; the chosen
model is then evaluated once on the test split by the caller.  No function
here takes test data: the test split cannot influence a choice made here.

* :func:`stratified_folds` assigns each training sample to one of N folds, with
  every class spread as evenly as possible over the folds.
* :func:`knn_cv` scores every k on every fold, with distances from the fold to
  the rest of the training split computed one block of fold rows at a time.
* :func:`mlp_cv` scores every point of a grid of MLP settings with a training
  function supplied by the caller.

In the DVC pipeline the stage ``knn_cv`` calls :func:`knn_cv` and the stage
``mlp_cv`` calls :func:`mlp_cv` when ``cv.folds`` (and for the MLP ``cv.mlp``)
turn cross-validation on; ``knn_sweep`` and ``mlp_train`` then use their
choice.  ``bench/features.py`` calls both too.

Choices: :func:`choose_k` takes the k of highest mean accuracy over the folds,
the smallest such k on a tie; :func:`mlp_cv` takes the grid point of highest
mean accuracy, the first in grid order on a tie.  Means are unweighted over
folds (fold sizes differ by at most one sample); standard deviations are the
sample standard deviation over folds (``ddof=1``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cifar_baselines import knn

MIB = 1 << 20

ProgressHook = Callable[[int], None]


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise ValueError(
            f"labels must be integers of shape (n_samples,), got {labels.dtype} "
            f"array of shape {labels.shape}"
        )
    return labels


def _check_n_folds(n_folds: int) -> int:
    if isinstance(n_folds, bool) or not isinstance(n_folds, int | np.integer):
        raise TypeError(f"n_folds must be an integer, got {n_folds!r}")
    if n_folds < 2:
        raise ValueError(f"n_folds must be at least 2, got {n_folds}")
    return int(n_folds)


def _check_train(
    features: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    features = np.asarray(features)
    labels = _check_labels(labels)
    if features.ndim != 2 or features.shape[0] != labels.shape[0]:
        raise ValueError(
            "features_train must have shape (n_train, n_features) with one row per "
            f"label, got features_train of shape {features.shape} and "
            f"labels_train of shape {labels.shape}"
        )
    return features, labels


def stratified_folds(labels: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Assign each sample to one of ``n_folds`` folds, class by class.

    The samples of each class are shuffled (with ``seed``) and dealt out to the
    folds in turn, one class after the other, continuing the rotation from
    where the previous class stopped.  Hence every fold holds ``n_c //
    n_folds`` or one more samples of each class ``c``, and the fold sizes
    differ by at most one.

    Parameters
    ----------
    labels : ndarray of shape (n_samples,), integer
    n_folds : int
        At least 2, and at most the size of the smallest class.
    seed : int

    Returns
    -------
    folds : ndarray of shape (n_samples,), int64
        The fold of each sample, in 0..n_folds-1.
    """
    labels = _check_labels(labels)
    n_folds = _check_n_folds(n_folds)
    classes, counts = np.unique(labels, return_counts=True)
    if len(labels) == 0 or counts.min() < n_folds:
        smallest = (
            "no samples"
            if len(labels) == 0
            else (f"class {classes[counts.argmin()]} has {counts.min()} samples")
        )
        raise ValueError(
            f"n_folds={n_folds} needs at least {n_folds} samples of every class, "
            f"but {smallest}"
        )

    # A random order, then a stable sort by label: classes one after the
    # other, shuffled within each class.
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    order = order[np.argsort(labels[order], kind="stable")]

    folds = np.empty(len(labels), dtype=np.int64)
    folds[order] = np.arange(len(labels)) % n_folds
    return folds


def choose_k(k_values: Sequence[int], mean_accuracy: np.ndarray) -> int:
    """Return the k of highest mean accuracy; the smallest such k on a tie.

    The smaller k is preferred on a tie as the more local rule and the one a
    sweep from k = 1 meets first (the rule of the k sweep on the test split).
    """
    mean_accuracy = np.asarray(mean_accuracy)
    if len(k_values) == 0 or mean_accuracy.shape != (len(k_values),):
        raise ValueError(
            f"mean_accuracy must have shape ({len(k_values)},), one value per k, "
            f"got shape {mean_accuracy.shape}"
        )
    best = mean_accuracy.max()
    return int(
        min(k for k, a in zip(k_values, mean_accuracy, strict=True) if a == best)
    )


@dataclass(frozen=True)
class KnnCVResult:
    """Accuracy of every k on every fold of the training split.

    Attributes
    ----------
    k_values : tuple of int
        Increasing.
    fold_sizes : tuple of int
        Samples in each fold.
    fold_accuracy : ndarray of shape (n_folds, n_k)
        Accuracy on fold f of the kNN rule with the other folds as reference.
    mean, std : ndarray of shape (n_k,)
        Mean and sample standard deviation (ddof=1) over folds.
    best_k : int
        :func:`choose_k` of ``mean``.
    """

    k_values: tuple[int, ...]
    fold_sizes: tuple[int, ...]
    fold_accuracy: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    best_k: int

    def to_dict(self) -> dict[str, Any]:
        """The result as plain JSON-ready values (for ``results/knn/cv.json``)."""
        return {
            "folds": len(self.fold_sizes),
            "fold_sizes": list(self.fold_sizes),
            "best_k": self.best_k,
            "best_mean_accuracy": float(self.mean[self.k_values.index(self.best_k)]),
            "k": [
                {
                    "k": k,
                    "mean": float(self.mean[j]),
                    "std": float(self.std[j]),
                    "folds": [float(a) for a in self.fold_accuracy[:, j]],
                }
                for j, k in enumerate(self.k_values)
            ],
        }


def fold_chunk_rows(n_rest: int, itemsize: int, chunk_mib: float) -> int:
    """Fold rows per block so that a block of distances fits ``chunk_mib``.

    A block is ``(rows, n_rest)`` distances of ``itemsize`` bytes; at least one
    row even when a single row does not fit.
    """
    return max(1, int(chunk_mib * MIB // (n_rest * itemsize)))


def knn_cv(
    features_train: np.ndarray,
    labels_train: np.ndarray,
    k_values: Sequence[int],
    n_folds: int,
    seed: int,
    *,
    chunk_mib: float = knn.DEFAULT_CHUNK_MIB,
    progress: ProgressHook | None = None,
) -> KnnCVResult:
    """Accuracy of the kNN rule for every k on each of N stratified folds.

    Fold f is classified with the other folds as the reference set (the
    "rest").  The fold's rows are taken one block at a time: the distances
    from a block to the rest are computed by
    :func:`cifar_baselines.knn.distance_matrix` and scored for every k by
    :func:`cifar_baselines.knn.sweep_k` (same neighbour order and vote rule as
    the test-split sweep).

    Memory: besides one copy of the rest ``(n_rest, n_features)`` and the
    centred copy that ``distance_matrix`` makes of it, at most one block of
    ``(rows, n_rest)`` distances is held, with ``rows`` chosen by
    :func:`fold_chunk_rows` so that the block takes at most ``chunk_mib`` MiB
    (the temporaries of ``distance_matrix`` and ``sweep_k`` have their own
    ``chunk_mib`` budget each).  The ``(n_train, n_train)`` matrix is never
    formed.

    Known limit: ``distance_matrix`` centres each block and the rest by their
    common mean, which depends on the block, so float32 distances are rounded
    a little differently for another ``chunk_mib``; a neighbour at a near-tie
    (a relative gap of about 1e-6) can then change.  Centring once per fold
    would remove it, if ``distance_matrix`` accepted a given centre.

    Parameters
    ----------
    features_train : ndarray of shape (n_train, n_features)
        Training-split features only.
    labels_train : ndarray of shape (n_train,), integer
    k_values : sequence of int
        Distinct k, each at most the smallest rest size.
    n_folds : int
        At least 2.
    seed : int
        Seed of :func:`stratified_folds`.
    chunk_mib : float, default 256
        Budget in MiB for one block of distances.
    progress : callable, optional
        Called with the number of fold rows of each finished block; the calls
        add up to ``n_train``.

    Returns
    -------
    result : KnnCVResult
    """
    features_train, labels_train = _check_train(features_train, labels_train)
    n_folds = _check_n_folds(n_folds)
    if len(k_values) == 0 or len(set(k_values)) != len(k_values):
        raise ValueError(f"k_values must be distinct and not empty, got {k_values!r}")
    ks = sorted(int(k) for k in k_values)
    if not chunk_mib > 0:
        raise ValueError(f"chunk_mib must be > 0, got {chunk_mib!r}")
    folds = stratified_folds(labels_train, n_folds, seed)
    smallest_rest = len(labels_train) - np.bincount(folds).max()
    if ks[0] < 1 or ks[-1] > smallest_rest:
        raise ValueError(
            f"every k must be in 1..{smallest_rest} (the smallest set of samples "
            f"outside one fold), got k_values {list(k_values)}"
        )

    itemsize = 8 if features_train.dtype == np.float64 else 4
    fold_accuracy = np.empty((n_folds, len(ks)), dtype=np.float64)
    fold_sizes = []
    for f in range(n_folds):
        in_fold = np.flatnonzero(folds == f)
        rest = np.flatnonzero(folds != f)
        rest_features = features_train[rest]
        rest_labels = labels_train[rest]
        rows = fold_chunk_rows(len(rest), itemsize, chunk_mib)

        # Correct predictions per k, summed over blocks of fold rows.
        correct = np.zeros(len(ks), dtype=np.int64)
        for start in range(0, len(in_fold), rows):
            block = in_fold[start : start + rows]
            dists = knn.distance_matrix(
                features_train[block], rest_features, chunk_mib=chunk_mib
            )
            sweep = knn.sweep_k(
                dists, rest_labels, labels_train[block], ks, chunk_mib=chunk_mib
            )
            correct += np.rint(sweep.accuracy * len(block)).astype(np.int64)
            del dists
            if progress is not None:
                progress(len(block))

        fold_accuracy[f] = correct / len(in_fold)
        fold_sizes.append(len(in_fold))

    mean = fold_accuracy.mean(axis=0)
    std = fold_accuracy.std(axis=0, ddof=1)
    return KnnCVResult(
        k_values=tuple(ks),
        fold_sizes=tuple(fold_sizes),
        fold_accuracy=fold_accuracy,
        mean=mean,
        std=std,
        best_k=choose_k(ks, mean),
    )


@dataclass(frozen=True)
class GridCVResult:
    """Accuracy of every grid point on every fold of the training split.

    Attributes
    ----------
    points : tuple of dict
        The grid points in grid order: the product of the value lists, the
        last name varying fastest.
    fold_accuracy : ndarray of shape (n_points, n_folds)
        NaN where a point failed on that fold or was not trained on it any
        more (see ``failures``).
    mean, std : ndarray of shape (n_points,)
        Mean and sample standard deviation (ddof=1) over folds; NaN for a
        point that failed.
    best_index : int
        Highest mean among the points that did not fail; the first in grid
        order on a tie.
    failures : tuple of (str or None)
        One per point: the message of the error that stopped it (see
        :func:`mlp_cv`'s ``skip_errors``), None for a point scored on every
        fold.
    """

    points: tuple[dict[str, Any], ...]
    fold_accuracy: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    best_index: int
    failures: tuple[str | None, ...] = ()

    @property
    def best_point(self) -> dict[str, Any]:
        """The chosen grid point."""
        return dict(self.points[self.best_index])

    def to_dict(self) -> dict[str, Any]:
        """The result as plain JSON-ready values (for ``results/mlp/cv.json``)."""
        return {
            "folds": self.fold_accuracy.shape[1],
            "best": self.best_point,
            "best_mean_accuracy": float(self.mean[self.best_index]),
            "grid": [
                {
                    **point,
                    "mean": _number(self.mean[i]),
                    "std": _number(self.std[i]),
                    "folds": [_number(a) for a in self.fold_accuracy[i]],
                    "failed": self.failures[i] if self.failures else None,
                }
                for i, point in enumerate(self.points)
            ],
        }


def _number(value: float) -> float | None:
    """A float for JSON, with None for NaN (which JSON cannot write)."""
    return None if np.isnan(value) else float(value)


TrainFn = Callable[..., float]


def grid_points(grid: Mapping[str, Sequence[Any]]) -> tuple[dict[str, Any], ...]:
    """All combinations of a grid, the last name varying fastest.

    ``{"hidden_units": [64, 256], "learning_rate": [0.01, 0.1]}`` gives
    (64, 0.01), (64, 0.1), (256, 0.01), (256, 0.1).
    """
    if not grid or any(len(values) == 0 for values in grid.values()):
        raise ValueError(
            f"grid must map at least one name to a non-empty list, got {dict(grid)!r}"
        )
    names = list(grid)
    return tuple(
        dict(zip(names, values, strict=True))
        for values in itertools.product(*grid.values())
    )


def mlp_cv(
    features_train: np.ndarray,
    labels_train: np.ndarray,
    grid: Mapping[str, Sequence[Any]],
    n_folds: int,
    seed: int,
    train_fn: TrainFn,
    *,
    skip_errors: tuple[type[Exception], ...] = (),
    progress: ProgressHook | None = None,
) -> GridCVResult:
    """Score every point of a grid of settings on N stratified folds.

    For each fold f and grid point p, ``train_fn`` is called as ::

        train_fn(x_fit, y_fit, x_val, y_val, **p) -> accuracy

    with ``x_fit, y_fit`` the samples outside fold f and ``x_val, y_val`` those
    in it; it trains on the former and returns the accuracy on the latter.
    Anything fitted from data (input scaling, early stopping) must be fitted
    inside ``train_fn`` on ``x_fit`` only.

    Parameters
    ----------
    features_train : ndarray of shape (n_train, n_features)
        Training-split features only.
    labels_train : ndarray of shape (n_train,), integer
    grid : mapping of str to sequence
        Keyword name of ``train_fn`` to the values to try.
    n_folds : int
        At least 2.
    seed : int
        Seed of :func:`stratified_folds`.
    train_fn : callable
        See above.
    skip_errors : tuple of exception types, default ()
        Errors of these types raised by ``train_fn`` (a training run that
        diverged, say) do not stop the search: the point is marked as failed
        with the error's message, is not trained on the remaining folds, and
        cannot be chosen.  Other errors propagate.
    progress : callable, optional
        Called with 1 after each (fold, grid point) training run, and once
        for each run skipped because its point failed, so the calls add up
        to ``n_folds * n_points``.

    Returns
    -------
    result : GridCVResult
        The chosen point is the one of highest mean accuracy among the points
        that did not fail, the first in grid order on a tie.

    Raises
    ------
    ValueError
        When every point failed (the message quotes the first failure).
    """
    features_train, labels_train = _check_train(features_train, labels_train)
    n_folds = _check_n_folds(n_folds)
    points = grid_points(grid)
    folds = stratified_folds(labels_train, n_folds, seed)

    fold_accuracy = np.full((len(points), n_folds), np.nan, dtype=np.float64)
    failures: list[str | None] = [None] * len(points)
    for f in range(n_folds):
        fit = folds != f
        val = ~fit
        x_fit, y_fit = features_train[fit], labels_train[fit]
        x_val, y_val = features_train[val], labels_train[val]
        for i, point in enumerate(points):
            if failures[i] is None:
                try:
                    accuracy = float(train_fn(x_fit, y_fit, x_val, y_val, **point))
                except skip_errors as exc:
                    failures[i] = f"fold {f}: {exc}"
                else:
                    if not 0.0 <= accuracy <= 1.0:
                        raise ValueError(
                            f"train_fn must return an accuracy in [0, 1], got "
                            f"{accuracy} for {point} on fold {f}"
                        )
                    fold_accuracy[i, f] = accuracy
            if progress is not None:
                progress(1)

    scored = [i for i, failure in enumerate(failures) if failure is None]
    if not scored:
        raise ValueError(f"every grid point failed; {points[0]}: {failures[0]}")
    mean = np.full(len(points), np.nan)
    std = np.full(len(points), np.nan)
    mean[scored] = fold_accuracy[scored].mean(axis=1)
    std[scored] = fold_accuracy[scored].std(axis=1, ddof=1)
    return GridCVResult(
        points=points,
        fold_accuracy=fold_accuracy,
        mean=mean,
        std=std,
        best_index=scored[int(np.argmax(mean[scored]))],  # the first maximum
        failures=tuple(failures),
    )
