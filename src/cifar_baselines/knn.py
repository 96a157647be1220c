"""k-nearest-neighbour classification from a precomputed distance matrix.

The classic tutorial's names are kept: :func:`distance_matrix`,
:func:`knn_predict` and :func:`evaluate_knn`.  Two additions serve the DVC
stages: :func:`save_distance_matrix` streams the matrix into a ``.npy`` file
without ever holding it in memory, and :func:`sweep_k` reads a (memory-mapped)
matrix once and scores every k of a list.

Neighbour order
---------------
Neighbours are ranked by distance, and equal distances by training index, the
lower index first: the order of a stable sort of each row.  The k nearest are
the first k in that order, so a distance tie at the k-th place goes to the
training sample that comes first.  scikit-learn leaves such a tie to the order
``argpartition`` happens to produce, so the two agree whenever no two training
samples are at exactly the same distance from a test sample at the k-th place.

Votes
-----
Every one of the k nearest has one vote for its label.  When several labels
have the most votes, the smallest label wins (for integer labels, the lowest
class index), as in the classic solution and in scikit-learn's
``KNeighborsClassifier`` with uniform weights.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import as_strided

from cifar_baselines.errors import PipelineError

DEFAULT_CHUNK_MIB = 256
MIB = 1 << 20

ProgressHook = Callable[[int], None]


# --------------------------------------------------------------------------- #
# Validation                                                                   #
# --------------------------------------------------------------------------- #


def _check_budget(chunk_mib: float) -> float:
    if isinstance(chunk_mib, bool) or not isinstance(chunk_mib, int | float):
        raise TypeError(f"chunk_mib must be a number, got {chunk_mib!r}")
    if not chunk_mib > 0:
        raise ValueError(f"chunk_mib must be > 0, got {chunk_mib!r}")
    return float(chunk_mib)


def _check_2d(name: str, x: np.ndarray, axes: str) -> np.ndarray:
    """Return ``x`` as a 2-D array of real numbers, of shape ``axes``, both > 0."""
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(
            f"{name} must have shape {axes} with both > 0, got shape {x.shape}"
        )
    if x.dtype.kind not in "uif":
        raise ValueError(f"{name} must hold integers or floats, got dtype {x.dtype}")
    return x


def _compute_dtype(a: np.ndarray, b: np.ndarray) -> np.dtype:
    """float64 when either input is a float wider than 4 bytes, else float32."""
    wide = any(x.dtype.kind == "f" and x.dtype.itemsize > 4 for x in (a, b))
    return np.dtype(np.float64 if wide else np.float32)


def _check_pair(
    a: np.ndarray, b: np.ndarray, names: tuple[str, str] = ("a", "b")
) -> tuple[np.ndarray, np.ndarray]:
    """Two sets of samples with the same number of features."""
    a = _check_2d(names[0], a, "(n_samples, n_features)")
    b = _check_2d(names[1], b, "(n_samples, n_features)")
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same number of features "
            f"(columns), got {names[0]} of shape {a.shape} and {names[1]} of "
            f"shape {b.shape}"
        )
    return a, b


def _check_labels(name: str, labels: np.ndarray, n: int, match: str) -> np.ndarray:
    """Return ``labels`` as an array of shape (n,); ``match`` says why n."""
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise ValueError(
            f"{name} must have shape ({n},) to match {match}, got shape {labels.shape}"
        )
    return labels


def _check_k(k: int, n_train: int, name: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer):
        raise TypeError(f"{name} must be an integer, got {k!r}")
    if not 1 <= k <= n_train:
        raise ValueError(
            f"{name} must be in 1..{n_train} (the number of training samples), got {k}"
        )
    return int(k)


# --------------------------------------------------------------------------- #
# Distances                                                                    #
# --------------------------------------------------------------------------- #


# Work on whole arrays that is not a matrix product (centring, the norms, the
# steps after the product) runs on slices of rows of about this size, which
# stay in the CPU caches from one step to the next: each slice is read from
# memory once instead of once per step.
_CACHE_BLOCK_BYTES = 4 * MIB


def distance_chunk_nbytes(
    n_rows: int,
    n_b: int,
    n_features: int,
    *,
    dtype: np.dtype | type = np.float32,
    into_out: bool = False,
) -> int:
    """Bytes of the temporaries held for one chunk of rows of ``a``.

    A chunk of ``n_rows`` rows needs its centred copy ``(n_rows, n_features)``
    and its squared norms ``(n_rows,)`` in float64 and in the compute dtype;
    unless the distances go straight into the result (``into_out=True``, as
    in :func:`distance_matrix`), also a block of distances
    ``(n_rows, n_b)``, as in :func:`save_distance_matrix`.  The centred copy
    of ``b`` is made once per call and is not part of a chunk.
    """
    itemsize = np.dtype(dtype).itemsize
    block = 0 if into_out else n_b
    return n_rows * ((n_features + block + 1) * itemsize + 8)


def distance_chunk_rows(
    n_b: int,
    n_features: int,
    *,
    dtype: np.dtype | type = np.float32,
    chunk_mib: float = DEFAULT_CHUNK_MIB,
    into_out: bool = False,
) -> int:
    """Rows of ``a`` per chunk so that one chunk's temporaries fit ``chunk_mib``.

    At least one row: when a single row does not fit, a chunk is one row and
    a ``RuntimeWarning`` says that the budget cannot be met.
    """
    budget = _check_budget(chunk_mib) * MIB
    per_row = distance_chunk_nbytes(1, n_b, n_features, dtype=dtype, into_out=into_out)
    return max(1, int(budget // per_row))


@dataclass(frozen=True)
class _Prepared:
    """``b`` made ready for many chunks of ``a``: centred, scaled, with norms."""

    mean: np.ndarray  # (n_features,) float64, the common mean of a and b
    b_scaled: np.ndarray  # (n_b, n_features), -2 * (b - mean)
    b_sq: np.ndarray  # (n_b,), ||b - mean||^2
    rows: int  # rows of a per chunk
    dtype: np.dtype


def _prepare(
    a: np.ndarray, b: np.ndarray, chunk_mib: float, *, into_out: bool
) -> _Prepared:
    """Centre ``b`` by the common mean of ``a`` and ``b``, slice by slice."""
    dtype = _compute_dtype(a, b)
    n_b, n_features = b.shape
    rows = distance_chunk_rows(
        n_b, n_features, dtype=dtype, chunk_mib=chunk_mib, into_out=into_out
    )
    one_row = distance_chunk_nbytes(1, n_b, n_features, dtype=dtype, into_out=into_out)
    if one_row > chunk_mib * MIB:
        warnings.warn(
            f"chunk_mib={chunk_mib} is less than one row of distances needs "
            f"({one_row} bytes for {n_features} features and {n_b} columns); "
            "using one row per chunk",
            RuntimeWarning,
            stacklevel=3,
        )

    # The common mean, summed in float64 so that an integer input is never
    # converted whole.
    step = max(1, _CACHE_BLOCK_BYTES // (n_features * 8))
    total = np.zeros(n_features, dtype=np.float64)
    for x in (a, b):
        for start in range(0, len(x), step):
            total += x[start : start + step].sum(axis=0, dtype=np.float64)
    mean = total / (len(a) + len(b))

    # Centre b, take its squared norms in float64, then scale it by -2 (exact:
    # a power of two) so that the matrix product gives -2 a.b directly.
    b_scaled = np.empty(b.shape, dtype=dtype)
    b_sq = np.empty(n_b, dtype=dtype)
    mean_c = mean.astype(dtype)
    for start in range(0, n_b, step):
        stop = start + step
        block = b_scaled[start:stop]
        np.subtract(b[start:stop], mean_c, out=block, dtype=dtype)
        b_sq[start:stop] = np.einsum("ij,ij->i", block, block, dtype=np.float64)
        block *= -2

    return _Prepared(mean=mean, b_scaled=b_scaled, b_sq=b_sq, rows=rows, dtype=dtype)


def _distance_block(a_rows: np.ndarray, prep: _Prepared, out: np.ndarray) -> None:
    """Write the distances from ``a_rows`` (n_rows, n_features) into ``out``.

    ``out`` has shape (n_rows, n_b), is C-contiguous and of ``prep.dtype``.
    """
    a_c = np.subtract(a_rows, prep.mean.astype(prep.dtype), dtype=prep.dtype)
    a_sq = np.einsum("ij,ij->i", a_c, a_c, dtype=np.float64).astype(prep.dtype)

    np.matmul(a_c, prep.b_scaled.T, out=out)

    step = max(1, _CACHE_BLOCK_BYTES // (out.shape[1] * out.itemsize))
    for start in range(0, len(out), step):
        rows = out[start : start + step]
        rows += a_sq[start : start + step, None]
        rows += prep.b_sq
        # Rounding can leave a squared distance slightly below zero when two
        # rows are (nearly) equal; the square root of it would be NaN.
        np.maximum(rows, 0, out=rows)
        np.sqrt(rows, out=rows)


def distance_matrix(
    a: np.ndarray,
    b: np.ndarray,
    *,
    chunk_mib: float = DEFAULT_CHUNK_MIB,
    out: np.ndarray | None = None,
    on_chunk: ProgressHook | None = None,
) -> np.ndarray:
    """Euclidean (L2) distance from every row of ``a`` to every row of ``b``.

    Parameters
    ----------
    a : ndarray of shape (n_a, n_features)
        Query samples, e.g. the test images.  Floats or integers (such as the
        uint8 images, converted one chunk at a time).
    b : ndarray of shape (n_b, n_features)
        Reference samples, e.g. the training images.
    chunk_mib : float, default 256
        Memory budget in MiB for the temporaries of one chunk of rows of ``a``
        (see :func:`distance_chunk_nbytes`).  The centred copy of ``b``, of the
        size of ``b`` in the compute dtype, comes on top of it.
    out : ndarray of shape (n_a, n_b), optional
        C-contiguous array of the result dtype to write into, e.g. a
        ``numpy.lib.format.open_memmap`` file; it is filled chunk by chunk.
    on_chunk : callable, optional
        Called after each chunk with its number of rows (for a progress bar).

    Returns
    -------
    dists : ndarray of shape (n_a, n_b)
        float64 when ``a`` or ``b`` is float64, float32 otherwise.  ``out`` when
        it is given.

    Notes
    -----
    The squared distance is expanded as
    ``||a_i||^2 + ||b_j||^2 - 2 a_i . b_j`` so that almost all the work is one
    matrix product.  Both sets are first centred by their common mean:
    distances do not change under a translation, and the smaller norms lose
    less to cancellation.  In floating point the expansion can still come out
    slightly negative for (nearly) identical rows; it is clamped at zero
    before the square root, which would otherwise return NaN.

    Accuracy: the error of a squared distance is a few units in the last
    place of ``||a_i - m||^2 + ||b_j - m||^2`` (``m`` the common mean), not of
    the squared distance itself.  Measured in float32 on the CIFAR-10 images
    (300 test rows against 54,000 training rows, float64 as reference): at
    most 5.2 float32 epsilons of that sum, a relative error of at most 3.9e-6
    on the distances (2.3e-5 without the centring), and no change in the 20
    nearest neighbours of any row.  ``tests/test_knn.py`` checks a bound of 8
    epsilons.  Distances far below the norms, such as between two copies of
    one image, are therefore approximate: they come out near zero rather
    than zero, except on the diagonal when ``a is b``, which is set to zero.
    The result is also not exactly symmetric when ``a is b``, nor bitwise
    the same for another ``chunk_mib``: the matrix product may round a value
    differently in another position or chunk shape.
    """
    a, b = _check_pair(a, b)
    _check_budget(chunk_mib)
    dtype = _compute_dtype(a, b)
    shape = (a.shape[0], b.shape[0])
    if out is not None:
        if out.shape != shape or out.dtype != dtype:
            raise ValueError(
                f"out must have shape {shape} and dtype {dtype}, got shape "
                f"{out.shape} and dtype {out.dtype}"
            )
        if not (out.flags.c_contiguous and out.flags.writeable):
            raise ValueError("out must be C-contiguous and writeable")
    else:
        out = np.empty(shape, dtype=dtype)

    prep = _prepare(a, b, chunk_mib, into_out=True)
    for start in range(0, shape[0], prep.rows):
        stop = min(start + prep.rows, shape[0])
        _distance_block(a[start:stop], prep, out[start:stop])
        if on_chunk is not None:
            on_chunk(stop - start)

    if a is b:
        np.fill_diagonal(out, 0)
    return out


def save_distance_matrix(
    path: str | os.PathLike,
    a: np.ndarray,
    b: np.ndarray,
    *,
    chunk_mib: float = DEFAULT_CHUNK_MIB,
    on_chunk: ProgressHook | None = None,
) -> tuple[int, int]:
    """Write :func:`distance_matrix` of ``a`` and ``b`` to a ``.npy`` file.

    The file is written block by block with ordinary file writes, one reused
    buffer of ``chunk_mib`` holding the block in flight.  The matrix is never
    in memory as a whole, and no page of the file is mapped into the
    process, so the resident memory stays at ``b``'s centred copy plus one
    chunk whatever the size of the matrix.  (Writing into a memory map
    instead would count every dirty page of the file as resident.)

    Parameters
    ----------
    path : str or path-like
        The file to create (or overwrite).  Make it atomic with
        :func:`cifar_baselines.atomic.atomic_path`.
    a, b, chunk_mib, on_chunk
        As for :func:`distance_matrix`.

    Returns
    -------
    shape : tuple of int
        ``(n_a, n_b)``, the shape of the saved matrix.
    """
    a, b = _check_pair(a, b)
    _check_budget(chunk_mib)

    prep = _prepare(a, b, chunk_mib, into_out=False)
    shape = (a.shape[0], b.shape[0])
    buffer = np.empty((min(prep.rows, shape[0]), shape[1]), dtype=prep.dtype)
    header = {
        "descr": np.lib.format.dtype_to_descr(prep.dtype),
        "fortran_order": False,
        "shape": shape,
    }

    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        for start in range(0, shape[0], prep.rows):
            block = buffer[: min(prep.rows, shape[0] - start)]
            _distance_block(a[start : start + len(block)], prep, block)
            if a is b:
                np.fill_diagonal(block[:, start:], 0)
            f.write(memoryview(block).cast("B"))
            if on_chunk is not None:
                on_chunk(len(block))
    return shape


# --------------------------------------------------------------------------- #
# Neighbours and votes                                                         #
# --------------------------------------------------------------------------- #


def _group_size(n_train: int, k_max: int) -> tuple[int, int]:
    """Columns per group ``s`` and number of groups ``g`` for :func:`_nearest`.

    About ``sqrt(n_train / k_max)`` columns per group balances the pass that
    takes group minima (``n_train`` per row) against the candidates kept
    (``k_max * s`` per row).
    """
    s = max(1, round(math.sqrt(n_train / k_max)))
    g = n_train // s
    if g < k_max:
        s, g = 1, n_train
    return s, g


def _nearest(block: np.ndarray, k_max: int) -> np.ndarray:
    """Column indices of the ``k_max`` nearest in each row, nearest first.

    Parameters
    ----------
    block : ndarray of shape (n_rows, n_train)
        Distances; may be a view of a memory map (it is read, never copied).
    k_max : int
        In 1..n_train.

    Returns
    -------
    neigh_ind : ndarray of shape (n_rows, k_max), dtype int64
        Ordered by distance, then by column index (the module's neighbour
        order).

    Notes
    -----
    A full partition of every row costs far more than one pass over it, so
    the first ``s * g`` columns are split into ``g`` strided groups of ``s``
    (group ``j`` holds columns ``j, j + g, j + 2g, ...``), leaving a tail of
    fewer than ``s`` columns.  One pass takes each group's minimum.  The
    ``k_max`` groups with the smallest minima, with the tail, hold all the
    ``k_max`` nearest: a closer column's group would have a smaller minimum.
    Only those ``k_max * s`` candidates (and the tail) are partitioned.

    A row where a distance equal to the ``k_max``-th lies outside the chosen
    neighbours (a tie that the candidates cannot settle) is redone with a
    stable sort of the whole row, one row at a time so the memory stays that
    of one row.  Real distances almost never tie (no row of the CIFAR-10
    matrix did); a matrix of many exact ties, such as small integers, is
    handled correctly but as slowly as a full sort.
    """
    n_rows, n_train = block.shape
    s, g = _group_size(n_train, k_max)

    # groups[r, i, j] is block[r, j + i * g]: a view, nothing is copied.
    row_stride, col_stride = block.strides
    groups = as_strided(
        block,
        shape=(n_rows, s, g),
        strides=(row_stride, g * col_stride, col_stride),
        writeable=False,
    )
    group_min = groups.min(axis=1)  # (n_rows, g)

    # Candidates: the k_max groups of smallest minima, then the tail.
    best = np.argpartition(group_min, k_max - 1, axis=1)[:, :k_max]
    cand_dist = np.take_along_axis(groups, best[:, None, :], axis=2)
    cand_dist = cand_dist.reshape(n_rows, s * k_max)  # position i * k_max + j
    if s * g < n_train:
        cand_dist = np.concatenate([cand_dist, block[:, s * g :]], axis=1)

    # The k_max nearest candidates, their columns, then ordered by
    # (distance, column).
    pick = np.argpartition(cand_dist, k_max - 1, axis=1)[:, :k_max]
    near_dist = np.take_along_axis(cand_dist, pick, axis=1)
    in_tail = pick >= s * k_max
    i, j = np.divmod(np.where(in_tail, 0, pick), k_max)
    near = np.take_along_axis(best, j, axis=1) + g * i
    near = np.where(in_tail, s * g + pick - s * k_max, near)
    order = np.lexsort((near, near_dist), axis=1)
    near = np.take_along_axis(near, order, axis=1)

    # A tie at the boundary: some distance equal to the k_max-th was not
    # picked, among the candidates or in a group left out.
    kth = near_dist.max(axis=1, keepdims=True)
    tied = (np.count_nonzero(cand_dist <= kth, axis=1) > k_max) | (
        np.count_nonzero(group_min <= kth, axis=1) > k_max
    )
    for row in np.flatnonzero(tied):
        near[row] = np.argsort(block[row], kind="stable")[:k_max]
    return near


def _nearest_chunk_rows(
    n_train: int, k_max: int, itemsize: int, chunk_mib: float
) -> int:
    """Rows of distances per chunk for :func:`_nearest` within ``chunk_mib``.

    Counted per row: the block of distances read, the group minima and
    their partition order, the candidates (two copies of their distances,
    their partition order and a comparison) and the neighbours.
    """
    s, g = _group_size(n_train, k_max)
    n_cand = k_max * s + (n_train - s * g)
    per_row = (
        (n_train + g) * itemsize + g * 8 + n_cand * (2 * itemsize + 9) + k_max * 48
    )
    return max(1, int(chunk_mib * MIB // per_row))


def _class_index(labels_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct labels and each training sample's index into them."""
    classes, index = np.unique(labels_train, return_inverse=True)
    return classes, index.reshape(-1)


def _vote(neigh_cls: np.ndarray, ks: Sequence[int], n_classes: int) -> np.ndarray:
    """Majority vote among the first k neighbours, for every k of ``ks``.

    Parameters
    ----------
    neigh_cls : ndarray of shape (n_rows, k_max)
        Class index of each neighbour, nearest first.
    ks : sequence of int
        Increasing values of k, each at most ``k_max``.
    n_classes : int

    Returns
    -------
    winners : ndarray of shape (n_rows, len(ks)), dtype int64
        For each k, the class index with the most votes; the smallest index
        on a tie (``argmax`` returns the first maximum).
    """
    n_rows = len(neigh_cls)
    offsets = (np.arange(n_rows) * n_classes)[:, None]
    counts = np.zeros(n_rows * n_classes, dtype=np.int64)
    winners = np.empty((n_rows, len(ks)), dtype=np.int64)

    # Votes are cumulative: the counts for k add only neighbours done..k-1.
    done = 0
    for j, k in enumerate(ks):
        counts += np.bincount(
            (offsets + neigh_cls[:, done:k]).ravel(), minlength=len(counts)
        )
        winners[:, j] = counts.reshape(n_rows, n_classes).argmax(axis=1)
        done = k
    return winners


def _predict_many(
    dists: np.ndarray,
    labels_train: np.ndarray,
    ks: Sequence[int],
    chunk_mib: float,
    on_chunk: ProgressHook | None,
) -> np.ndarray:
    """Predictions of shape (n_test, len(ks)) for increasing ``ks``, chunk by chunk."""
    classes, train_cls = _class_index(labels_train)
    n_test, n_train = dists.shape
    k_max = ks[-1]
    itemsize = dists.dtype.itemsize
    # Blocks small enough to stay in the CPU caches between the pass that
    # takes group minima and the gather of candidates: on the 6000 x 54000
    # CIFAR-10 matrix they swept k = 1..20 in 0.83 s against 0.99 s for blocks
    # of 256 MiB (medians of 5 runs on 2 cores, other jobs running).
    rows = min(
        _nearest_chunk_rows(n_train, k_max, itemsize, chunk_mib),
        max(1, _CACHE_BLOCK_BYTES // (n_train * itemsize)),
    )
    predictions = np.empty((n_test, len(ks)), dtype=classes.dtype)

    for start in range(0, n_test, rows):
        stop = min(start + rows, n_test)
        neigh = _nearest(dists[start:stop], k_max)
        predictions[start:stop] = classes[_vote(train_cls[neigh], ks, len(classes))]
        if on_chunk is not None:
            on_chunk(stop - start)
    return predictions


def knn_predict(
    dists: np.ndarray,
    labels_train: np.ndarray,
    k: int,
    *,
    chunk_mib: float = DEFAULT_CHUNK_MIB,
) -> np.ndarray:
    """Predict each test sample's label by a majority vote of its k nearest.

    Parameters
    ----------
    dists : ndarray of shape (n_test, n_train)
        Distances from test to training samples, as :func:`distance_matrix`
        returns them; may be memory-mapped (it is read in chunks of rows).
        Must not hold NaN.
    labels_train : ndarray of shape (n_train,)
        Label of each training sample (any sortable values; integers here).
    k : int
        Number of neighbours, in 1..n_train.
    chunk_mib : float, default 256
        Memory budget in MiB for one chunk of rows.

    Returns
    -------
    predictions : ndarray of shape (n_test,)
        Of the dtype of ``labels_train``.  Distance ties at the k-th place go
        to the lower training index and vote ties to the smallest label (see
        the module docstring).
    """
    dists = _check_2d("dists", dists, "(n_test, n_train)")
    labels_train = _check_labels(
        "labels_train", labels_train, dists.shape[1], f"dists of shape {dists.shape}"
    )
    k = _check_k(k, dists.shape[1])
    _check_budget(chunk_mib)

    return _predict_many(dists, labels_train, [k], chunk_mib, None)[:, 0]


def evaluate_knn(
    data_train: np.ndarray,
    labels_train: np.ndarray,
    data_test: np.ndarray,
    labels_test: np.ndarray,
    k: int,
    *,
    chunk_mib: float = DEFAULT_CHUNK_MIB,
) -> float:
    """Accuracy of the k-nearest-neighbour rule on a test set.

    Parameters
    ----------
    data_train : ndarray of shape (n_train, n_features)
    labels_train : ndarray of shape (n_train,)
    data_test : ndarray of shape (n_test, n_features)
    labels_test : ndarray of shape (n_test,)
    k : int
        Number of neighbours, in 1..n_train.
    chunk_mib : float, default 256
        Memory budget in MiB, for :func:`distance_matrix` and
        :func:`knn_predict`.

    Returns
    -------
    accuracy : float
        Share of test samples whose predicted label equals ``labels_test``.
    """
    data_train, data_test = _check_pair(
        data_train, data_test, names=("data_train", "data_test")
    )
    labels_train = _check_labels(
        "labels_train",
        labels_train,
        len(data_train),
        f"data_train of shape {data_train.shape}",
    )
    labels_test = _check_labels(
        "labels_test",
        labels_test,
        len(data_test),
        f"data_test of shape {data_test.shape}",
    )
    _check_k(k, len(data_train))
    _check_budget(chunk_mib)

    dists = distance_matrix(data_test, data_train, chunk_mib=chunk_mib)
    predictions = knn_predict(dists, labels_train, k, chunk_mib=chunk_mib)
    return float(np.mean(predictions == labels_test))


# --------------------------------------------------------------------------- #
# Sweep over k                                                                 #
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class SweepResult:
    """Accuracy for every k of a sweep, and the predictions of the best k.

    Attributes
    ----------
    k_values : tuple of int
        The k evaluated, in increasing order.
    accuracy : ndarray of shape (n_k,)
        Accuracy for each of ``k_values``.
    best_k : int
        The k of highest accuracy; the smallest such k on a tie (the simpler
        model, and the one a sweep from k=1 meets first).
    best_accuracy : float
    best_predictions : ndarray of shape (n_test,)
        Predicted labels with ``best_k`` neighbours.
    """

    k_values: tuple[int, ...]
    accuracy: np.ndarray
    best_k: int
    best_accuracy: float
    best_predictions: np.ndarray


def sweep_k(
    dists: np.ndarray,
    labels_train: np.ndarray,
    labels_test: np.ndarray,
    k_values: Sequence[int],
    *,
    chunk_mib: float = DEFAULT_CHUNK_MIB,
    on_chunk: ProgressHook | None = None,
) -> SweepResult:
    """Score k-nearest-neighbour prediction for every k of a list in one read.

    Each chunk of test rows is read once: its ``max(k_values)`` nearest
    neighbours are found and ordered once, and the votes for every k are
    running counts over that ordered list.  Predictions are those of
    :func:`knn_predict` for each k.

    Parameters
    ----------
    dists : ndarray of shape (n_test, n_train)
        As for :func:`knn_predict`; a memory-mapped file is streamed.
    labels_train : ndarray of shape (n_train,)
    labels_test : ndarray of shape (n_test,)
    k_values : sequence of int
        Distinct values of k, each in 1..n_train, in any order.
    chunk_mib : float, default 256
        Memory budget in MiB for one chunk of rows.
    on_chunk : callable, optional
        Called after each chunk with its number of rows.

    Returns
    -------
    result : SweepResult
    """
    dists = _check_2d("dists", dists, "(n_test, n_train)")
    labels_train = _check_labels(
        "labels_train", labels_train, dists.shape[1], f"dists of shape {dists.shape}"
    )
    labels_test = _check_labels(
        "labels_test", labels_test, dists.shape[0], f"dists of shape {dists.shape}"
    )
    if len(k_values) == 0:
        raise ValueError("k_values must hold at least one k")
    ks = sorted(_check_k(k, dists.shape[1], "every k of k_values") for k in k_values)
    if len(set(ks)) != len(ks):
        raise ValueError(f"k_values must not repeat a k, got {list(k_values)}")
    _check_budget(chunk_mib)

    predictions = _predict_many(dists, labels_train, ks, chunk_mib, on_chunk)
    accuracy = np.mean(predictions == labels_test[:, None], axis=0)

    best = int(np.argmax(accuracy))  # the first maximum: the smallest k
    return SweepResult(
        k_values=tuple(ks),
        accuracy=accuracy,
        best_k=ks[best],
        best_accuracy=float(accuracy[best]),
        best_predictions=predictions[:, best].copy(),
    )


# --------------------------------------------------------------------------- #
# Files                                                                        #
# --------------------------------------------------------------------------- #


def open_npy(
    path: str | os.PathLike, *, ndim: int, kinds: str, mmap: bool = True
) -> np.ndarray:
    """Open a ``.npy`` file, memory-mapped read-only, and check rank and dtype.

    Parameters
    ----------
    path : str or path-like
    ndim : int
        The number of dimensions expected.
    kinds : str
        Accepted ``dtype.kind`` codes, e.g. ``"u"`` for uint8 images, ``"iu"``
        for labels, ``"f"`` for distances.
    mmap : bool, default True
        Map the file instead of reading it.

    Raises
    ------
    PipelineError
        When the file cannot be read, is not a ``.npy`` array, or has another
        rank or kind of dtype; the message names the file.
    """
    try:
        with open(path, "rb") as f:
            magic = f.read(len(np.lib.format.MAGIC_PREFIX))
        if magic != np.lib.format.MAGIC_PREFIX:
            raise PipelineError(f"{path}: not a .npy file")
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except OSError as exc:
        raise PipelineError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise PipelineError(f"{path}: not a readable .npy file ({exc})") from None
    if array.ndim != ndim or array.dtype.kind not in kinds:
        raise PipelineError(
            f"{path}: expected a {ndim}-D array of dtype kind {kinds!r}, got shape "
            f"{array.shape} and dtype {array.dtype}"
        )
    return array
