"""Tests of cifar_baselines.knn against scipy, scikit-learn and hand-worked cases."""

import tracemalloc

import numpy as np
import pytest
from numpy.lib.format import open_memmap
from scipy.spatial.distance import cdist
from sklearn.neighbors import KNeighborsClassifier

from cifar_baselines import knn
from cifar_baselines.errors import PipelineError

EPS32 = float(np.finfo(np.float32).eps)


def _rng(seed=0):
    return np.random.default_rng(seed)


def _blobs(n_train, n_test, n_features, n_classes, seed=0):
    """Random points and labels; continuous, so no two distances are equal."""
    rng = _rng(seed)
    x_train = rng.normal(size=(n_train, n_features))
    x_test = rng.normal(size=(n_test, n_features))
    y_train = rng.integers(0, n_classes, n_train)
    y_test = rng.integers(0, n_classes, n_test)
    return x_train, y_train, x_test, y_test


def _stable_reference(dists, labels, k):
    """The documented rule, one row at a time: stable sort, count, first max."""
    classes = np.unique(labels)
    out = []
    for row in dists:
        nearest = np.argsort(row, kind="stable")[:k]
        counts = [np.sum(labels[nearest] == c) for c in classes]
        out.append(classes[int(np.argmax(counts))])
    return np.array(out)


# --------------------------------------------------------------------------- #
# distance_matrix                                                              #
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("shape", [(1, 1, 1), (7, 13, 5), (40, 300, 64)])
def test_distance_matrix_float64_matches_cdist(shape):
    n_a, n_b, n_features = shape
    rng = _rng(1)
    a = rng.normal(3.0, 2.0, size=(n_a, n_features))
    b = rng.normal(3.0, 2.0, size=(n_b, n_features))

    got = knn.distance_matrix(a, b)

    assert got.dtype == np.float64
    np.testing.assert_allclose(got, cdist(a, b), rtol=1e-6, atol=1e-9)


def test_distance_matrix_float32_within_documented_bound():
    # Images-like data: uint8 pixels of the CIFAR width.  The documented bound
    # is on squared distances: a few eps32 of the summed squared norms about
    # the common mean (5.2 measured on CIFAR-10; 8 allowed here).
    rng = _rng(2)
    a = rng.integers(0, 256, size=(20, 3072)).astype(np.float32)
    b = rng.integers(0, 256, size=(300, 3072)).astype(np.float32)
    a[0] = b[7]  # one duplicate: a distance far below the norms

    got = knn.distance_matrix(a, b)
    ref = cdist(a.astype(np.float64), b.astype(np.float64))

    assert got.dtype == np.float32
    mean = np.concatenate([a, b]).astype(np.float64).mean(axis=0)
    norms = ((a - mean) ** 2).sum(1)[:, None] + ((b - mean) ** 2).sum(1)[None, :]
    error = np.abs(got.astype(np.float64) ** 2 - ref**2)
    assert np.all(error <= 8 * EPS32 * norms)
    # Away from duplicates that is a relative error of a few 1e-6.
    far = ref > 100
    np.testing.assert_allclose(got[far], ref[far], rtol=2e-5)


def test_distance_matrix_uint8_is_float32_of_the_converted_images():
    rng = _rng(3)
    a = rng.integers(0, 256, size=(9, 48), dtype=np.uint8)
    b = rng.integers(0, 256, size=(31, 48), dtype=np.uint8)

    got = knn.distance_matrix(a, b)

    assert got.dtype == np.float32
    np.testing.assert_allclose(
        got, cdist(a.astype(np.float64), b.astype(np.float64)), rtol=1e-5, atol=1e-3
    )
    np.testing.assert_array_equal(
        got, knn.distance_matrix(a.astype(np.float32), b.astype(np.float32))
    )


def test_distance_matrix_float64_if_either_input_is():
    a = np.ones((2, 3), dtype=np.float32)
    b = np.zeros((4, 3), dtype=np.float64)
    assert knn.distance_matrix(a, b).dtype == np.float64
    np.testing.assert_allclose(knn.distance_matrix(a, b), np.sqrt(3.0))


def test_distance_matrix_hand_computed():
    a = np.array([[0.0, 0.0], [3.0, 4.0]])
    b = np.array([[0.0, 0.0], [6.0, 8.0], [3.0, 0.0]])

    got = knn.distance_matrix(a, b)

    np.testing.assert_allclose(got, [[0, 10, 3], [5, 5, 4]], atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_chunked_equals_unchunked(dtype):
    x_train, _, x_test, _ = _blobs(500, 97, 24, 2)
    a, b = x_test.astype(dtype), x_train.astype(dtype)
    rows = []

    whole = knn.distance_matrix(a, b, chunk_mib=1024)
    chunked = knn.distance_matrix(a, b, chunk_mib=0.001, on_chunk=rows.append)

    assert len(rows) > 5 and sum(rows) == len(a)
    rtol = 1e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(chunked, whole, rtol=rtol)


@pytest.mark.parametrize("chunk_mib", [0.01, 0.05, 0.3, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("save", [False, True])
def test_every_chunk_within_budget(tmp_path, chunk_mib, dtype, save):
    # distance_matrix writes into its result; save_distance_matrix also holds
    # a block of distances per chunk.
    a = _rng(4).normal(size=(300, 40)).astype(dtype)
    b = _rng(5).normal(size=(700, 40)).astype(dtype)
    rows = []

    if save:
        knn.save_distance_matrix(
            tmp_path / "d.npy", a, b, chunk_mib=chunk_mib, on_chunk=rows.append
        )
    else:
        knn.distance_matrix(a, b, chunk_mib=chunk_mib, on_chunk=rows.append)

    budget = chunk_mib * knn.MIB
    shape = {"dtype": dtype, "into_out": not save}
    expected = knn.distance_chunk_rows(700, 40, chunk_mib=chunk_mib, **shape)
    assert max(rows) == min(expected, 300)
    for n in rows:
        assert knn.distance_chunk_nbytes(n, 700, 40, **shape) <= budget
    assert knn.distance_chunk_nbytes(expected + 1, 700, 40, **shape) > budget


def test_saving_holds_no_more_than_the_budget_and_the_copy_of_b(tmp_path):
    # What numpy allocates is traced: besides the centred copy of b (and its
    # norms), a save may hold only one chunk's temporaries.
    a = _rng(6).integers(0, 256, size=(400, 64), dtype=np.uint8)
    b = _rng(7).integers(0, 256, size=(3000, 64), dtype=np.uint8)
    chunk_mib = 0.5
    path = tmp_path / "d.npy"

    tracemalloc.start()
    try:
        knn.save_distance_matrix(path, a, b, chunk_mib=chunk_mib)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    copy_of_b = b.size * 4 + len(b) * 4
    assert peak <= copy_of_b + chunk_mib * knn.MIB + 64 * 1024
    assert peak > copy_of_b  # the trace does see numpy's arrays


def test_budget_below_one_row_warns_and_uses_one_row(tmp_path):
    a = np.ones((3, 10))
    b = np.zeros((100_000, 10))
    rows = []

    with pytest.warns(RuntimeWarning, match=r"less than one row of distances needs"):
        knn.save_distance_matrix(
            tmp_path / "d.npy", a, b, chunk_mib=0.5, on_chunk=rows.append
        )

    assert rows == [1, 1, 1]


def test_zero_diagonal_for_identical_inputs():
    x = _rng(8).integers(0, 256, size=(50, 3072)).astype(np.float32)

    same = knn.distance_matrix(x, x, chunk_mib=0.5)
    copied = knn.distance_matrix(x, x.copy(), chunk_mib=0.5)

    # `a is b`: exactly zero.  Equal but distinct arrays: the expansion leaves
    # a residue of the order of sqrt(eps32 * 2 * ||x - m||^2), never NaN.
    np.testing.assert_array_equal(np.diag(same), 0)
    np.testing.assert_allclose(same, same.T, rtol=1e-6)
    norms = ((x - x.mean(axis=0)) ** 2).sum(axis=1)
    assert np.all(np.diag(copied) <= np.sqrt(8 * EPS32 * 2 * norms))
    off = ~np.eye(50, dtype=bool)
    np.testing.assert_allclose(copied[off], same[off], rtol=1e-6)


def test_zero_diagonal_when_saving_identical_inputs(tmp_path):
    x = _rng(9).normal(size=(30, 8)).astype(np.float32)

    knn.save_distance_matrix(tmp_path / "d.npy", x, x, chunk_mib=0.001)

    np.testing.assert_array_equal(np.diag(np.load(tmp_path / "d.npy")), 0)


def test_mismatched_widths_quote_both_shapes():
    with pytest.raises(
        ValueError, match=r"a of shape \(3, 4\) and b of shape \(5, 6\)"
    ):
        knn.distance_matrix(np.ones((3, 4)), np.ones((5, 6)))


@pytest.mark.parametrize(
    ("a", "message"),
    [
        (np.ones(4), r"a must have shape \(n_samples, n_features\).*got shape \(4,\)"),
        (np.ones((0, 4)), r"got shape \(0, 4\)"),
        (np.array([["x"] * 4]), r"a must hold integers or floats, got dtype <U1"),
    ],
)
def test_bad_samples_are_refused(a, message):
    with pytest.raises(ValueError, match=message):
        knn.distance_matrix(a, np.ones((5, 4)))


@pytest.mark.parametrize("chunk_mib", [0, -1])
def test_bad_budget_is_refused(chunk_mib):
    with pytest.raises(ValueError, match=r"chunk_mib must be > 0"):
        knn.distance_matrix(np.ones((2, 2)), np.ones((2, 2)), chunk_mib=chunk_mib)


def test_out_memmap_is_filled(tmp_path):
    x_train, _, x_test, _ = _blobs(120, 33, 10, 2)
    a, b = x_test.astype(np.float32), x_train.astype(np.float32)
    out = open_memmap(tmp_path / "d.npy", mode="w+", dtype=np.float32, shape=(33, 120))

    returned = knn.distance_matrix(a, b, chunk_mib=0.0001, out=out)
    out.flush()
    del out

    assert isinstance(returned, np.memmap)
    np.testing.assert_allclose(
        np.load(tmp_path / "d.npy"), knn.distance_matrix(a, b), rtol=1e-6
    )


@pytest.mark.parametrize(
    ("out", "message"),
    [
        (
            np.empty((3, 4), np.float32),
            r"out must have shape \(2, 5\) and dtype float32",
        ),
        (np.empty((2, 5), np.float64), r"got shape \(2, 5\) and dtype float64"),
        (np.empty((5, 2), np.float32).T, r"out must be C-contiguous"),
    ],
)
def test_bad_out_is_refused(out, message):
    a = np.ones((2, 3), np.float32)
    b = np.ones((5, 3), np.float32)
    with pytest.raises(ValueError, match=message):
        knn.distance_matrix(a, b, out=out)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64])
def test_save_distance_matrix_equals_distance_matrix(tmp_path, dtype):
    rng = _rng(10)
    a = rng.integers(0, 256, size=(37, 20)).astype(dtype)
    b = rng.integers(0, 256, size=(90, 20)).astype(dtype)
    rows = []

    shape = knn.save_distance_matrix(
        tmp_path / "d.npy", a, b, chunk_mib=0.002, on_chunk=rows.append
    )

    # Chunks of other sizes may round the matrix product differently.
    saved = np.load(tmp_path / "d.npy")
    assert shape == saved.shape == (37, 90) and len(rows) > 1
    rtol = 1e-13 if dtype == np.float64 else 1e-6
    np.testing.assert_allclose(saved, knn.distance_matrix(a, b), rtol=rtol)


# --------------------------------------------------------------------------- #
# knn_predict                                                                  #
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 8, 20, 150])
def test_knn_predict_matches_sklearn_brute(k):
    # Three classes make vote ties common for even k.
    x_train, y_train, x_test, _ = _blobs(150, 200, 6, 3, seed=k)
    dists = knn.distance_matrix(x_test, x_train)
    sklearn = KNeighborsClassifier(n_neighbors=k, algorithm="brute")

    got = knn.knn_predict(dists, y_train, k)

    np.testing.assert_array_equal(got, sklearn.fit(x_train, y_train).predict(x_test))
    if k in (2, 4, 8, 20):
        nearest = np.argsort(dists, axis=1)[:, :k]
        counts = np.stack([(y_train[nearest] == c).sum(1) for c in range(3)], 1)
        top = counts.max(axis=1, keepdims=True)
        assert np.any((counts == top).sum(axis=1) > 1), "no vote tie was tested"


@pytest.mark.parametrize("k", [2, 4])
def test_knn_predict_matches_sklearn_on_constructed_class_ties(k):
    # Every test point has k/2 neighbours of label 1 and k/2 of label 0 at
    # distinct distances (1, 2, ...); label 2 lies far away.
    offsets = np.arange(1, k + 1, dtype=np.float64)
    x_train = np.concatenate([offsets, [100.0]])[:, None]
    y_train = np.array([1, 0] * (k // 2) + [2])
    x_test = np.array([[0.0], [-0.5]])
    dists = knn.distance_matrix(x_test, x_train)
    sklearn = KNeighborsClassifier(n_neighbors=k, algorithm="brute")

    got = knn.knn_predict(dists, y_train, k)

    np.testing.assert_array_equal(got, [0, 0])
    np.testing.assert_array_equal(got, sklearn.fit(x_train, y_train).predict(x_test))


def test_knn_predict_hand_computed():
    # Training points on a line with labels; one test point at 0.1.
    x_train = np.array([[0.0], [1.0], [2.0], [3.0], [10.0]])
    y_train = np.array([1, 0, 1, 0, 2])
    dists = knn.distance_matrix(np.array([[0.1]]), x_train)

    got = [int(knn.knn_predict(dists, y_train, k)[0]) for k in range(1, 6)]

    # k=1: {1}; k=2: {1,0} tie -> 0; k=3: 1 wins 2-1; k=4: 2-2 -> 0;
    # k=5: 2-2-1 -> 0.
    assert got == [1, 0, 1, 0, 0]


def test_distance_tie_at_the_boundary_goes_to_the_lower_index():
    # Column 1 is nearest (label 2); columns 2 (label 1) and 3 (label 2) tie
    # for second place.  Column 2 comes first, so k=2 votes {2, 1} and the tie
    # goes to label 1; had column 3 been taken, label 2 would win.
    dists = np.array([[5.0, 1.0, 3.0, 3.0]])
    labels = np.array([0, 2, 1, 2])

    assert knn.knn_predict(dists, labels, 2)[0] == 1
    assert knn.knn_predict(dists, labels, 3)[0] == 2


@pytest.mark.parametrize("n_train", [7, 300, 1003])
@pytest.mark.parametrize("k", [1, 2, 3, 6, 7])
def test_knn_predict_with_many_distance_ties_follows_the_stable_order(n_train, k):
    # Small integer distances: ties everywhere, at the k-th place too.
    rng = _rng(n_train + k)
    dists = rng.integers(0, 6, size=(40, n_train)).astype(np.float32)
    labels = rng.integers(0, 4, n_train)

    got = knn.knn_predict(dists, labels, k, chunk_mib=0.01)

    np.testing.assert_array_equal(got, _stable_reference(dists, labels, k))


@pytest.mark.parametrize(
    ("n_train", "k_max", "tail"),
    [(400, 4, 0), (401, 4, 1), (2048, 20, 8), (50, 20, 0), (30, 30, 0), (9, 1, 0)],
)
def test_nearest_finds_the_sorted_neighbours(n_train, k_max, tail):
    # Groups of s columns that divide n_train, and some that leave a tail.
    s, g = knn._group_size(n_train, k_max)
    assert n_train - s * g == tail
    dists = _rng(n_train).random((30, n_train)).astype(np.float32)

    got = knn._nearest(dists, k_max)

    np.testing.assert_array_equal(got, np.argsort(dists, axis=1)[:, :k_max])


def test_nearest_reads_a_strided_view():
    dists = _rng(11).random((40, 900))
    view = dists[::2, ::3]  # (20, 300), neither axis contiguous

    got = knn._nearest(view, 6)

    np.testing.assert_array_equal(got, np.argsort(view, axis=1)[:, :6])


def test_knn_predict_keeps_the_label_values():
    x_train, y_train, x_test, _ = _blobs(60, 25, 4, 3)
    names = np.array(["cat", "dog", "ship"])[y_train]
    dists = knn.distance_matrix(x_test, x_train)

    got = knn.knn_predict(dists, names, 4)

    expected = KNeighborsClassifier(n_neighbors=4, algorithm="brute")
    np.testing.assert_array_equal(got, expected.fit(x_train, names).predict(x_test))


@pytest.mark.parametrize("k", [0, -1, 11])
def test_knn_predict_refuses_k_out_of_range(k):
    with pytest.raises(ValueError, match=rf"k must be in 1\.\.10 .*got {k}"):
        knn.knn_predict(np.ones((2, 10)), np.zeros(10, int), k)


def test_knn_predict_refuses_a_non_integer_k():
    with pytest.raises(TypeError, match=r"k must be an integer, got 2\.0"):
        knn.knn_predict(np.ones((2, 10)), np.zeros(10, int), 2.0)


def test_knn_predict_quotes_both_shapes_on_a_label_mismatch():
    with pytest.raises(
        ValueError,
        match=r"labels_train must have shape \(10,\) to match dists of shape "
        r"\(2, 10\), got shape \(9,\)",
    ):
        knn.knn_predict(np.ones((2, 10)), np.zeros(9, int), 1)


def test_knn_predict_on_a_memory_mapped_matrix(tmp_path):
    x_train, y_train, x_test, _ = _blobs(400, 60, 5, 4)
    knn.save_distance_matrix(tmp_path / "d.npy", x_test, x_train)
    mapped = np.load(tmp_path / "d.npy", mmap_mode="r")

    got = knn.knn_predict(mapped, y_train, 5, chunk_mib=0.05)

    np.testing.assert_array_equal(
        got, knn.knn_predict(knn.distance_matrix(x_test, x_train), y_train, 5)
    )


# --------------------------------------------------------------------------- #
# evaluate_knn and sweep_k                                                     #
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("k", [1, 4, 9])
def test_evaluate_knn_matches_sklearn_score(k):
    x_train, y_train, x_test, y_test = _blobs(300, 120, 8, 3, seed=20 + k)
    sklearn = KNeighborsClassifier(n_neighbors=k, algorithm="brute")

    got = knn.evaluate_knn(x_train, y_train, x_test, y_test, k)

    assert isinstance(got, float)
    assert got == pytest.approx(sklearn.fit(x_train, y_train).score(x_test, y_test))


def test_evaluate_knn_quotes_both_shapes():
    with pytest.raises(
        ValueError,
        match=r"labels_test must have shape \(4,\) to match data_test of shape "
        r"\(4, 3\), got shape \(5,\)",
    ):
        knn.evaluate_knn(np.ones((6, 3)), np.zeros(6, int), np.ones((4, 3)), [0] * 5, 1)


@pytest.mark.parametrize("chunk_mib", [0.02, 256])
def test_sweep_equals_knn_predict_for_every_k(chunk_mib):
    x_train, y_train, x_test, y_test = _blobs(700, 90, 6, 4, seed=3)
    dists = knn.distance_matrix(x_test, x_train).astype(np.float32)
    k_values = [7, 1, 2, 20, 3, 12]
    rows = []

    result = knn.sweep_k(
        dists, y_train, y_test, k_values, chunk_mib=chunk_mib, on_chunk=rows.append
    )

    assert result.k_values == (1, 2, 3, 7, 12, 20)
    assert sum(rows) == 90 and (len(rows) > 1) == (chunk_mib < 1)
    for k, accuracy in zip(result.k_values, result.accuracy, strict=True):
        predictions = knn.knn_predict(dists, y_train, k)
        assert accuracy == np.mean(predictions == y_test)
        if k == result.best_k:
            np.testing.assert_array_equal(result.best_predictions, predictions)
    assert result.best_accuracy == result.accuracy.max()
    assert result.best_accuracy == pytest.approx(
        knn.evaluate_knn(x_train, y_train, x_test, y_test, result.best_k)
    )


def test_sweep_with_distance_ties_equals_the_stable_reference():
    rng = _rng(30)
    dists = rng.integers(0, 4, size=(50, 80)).astype(np.float32)
    y_train = rng.integers(0, 3, 80)
    y_test = rng.integers(0, 3, 50)

    result = knn.sweep_k(dists, y_train, y_test, [1, 2, 5, 9], chunk_mib=0.01)

    for k, accuracy in zip(result.k_values, result.accuracy, strict=True):
        assert accuracy == np.mean(_stable_reference(dists, y_train, k) == y_test)


def test_sweep_best_k_tie_goes_to_the_smallest_k():
    # Two far-apart clusters: every k up to the cluster size is always right.
    x_train = np.array([[0.0], [0.1], [0.2], [10.0], [10.1], [10.2]])
    y_train = np.array([0, 0, 0, 1, 1, 1])
    x_test = np.array([[0.05], [10.05]])
    dists = knn.distance_matrix(x_test, x_train)

    result = knn.sweep_k(dists, y_train, np.array([0, 1]), [3, 2, 1])

    np.testing.assert_array_equal(result.accuracy, [1.0, 1.0, 1.0])
    assert result.best_k == 1


@pytest.mark.parametrize(
    ("k_values", "message"),
    [
        ([], r"k_values must hold at least one k"),
        ([1, 0], r"every k of k_values must be in 1\.\.10 .*got 0"),
        ([3, 11], r"every k of k_values must be in 1\.\.10 .*got 11"),
        ([2, 2], r"k_values must not repeat a k, got \[2, 2\]"),
    ],
)
def test_sweep_refuses_bad_k_values(k_values, message):
    with pytest.raises(ValueError, match=message):
        knn.sweep_k(np.ones((2, 10)), np.zeros(10, int), np.zeros(2, int), k_values)


def test_sweep_quotes_both_shapes_on_a_test_label_mismatch():
    with pytest.raises(
        ValueError,
        match=r"labels_test must have shape \(2,\) to match dists of shape "
        r"\(2, 10\), got shape \(3,\)",
    ):
        knn.sweep_k(np.ones((2, 10)), np.zeros(10, int), np.zeros(3, int), [1])


# --------------------------------------------------------------------------- #
# open_npy                                                                     #
# --------------------------------------------------------------------------- #


def test_open_npy_maps_a_checked_array(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((3, 4), np.uint8))

    x = knn.open_npy(tmp_path / "x.npy", ndim=2, kinds="u")

    assert isinstance(x, np.memmap) and x.shape == (3, 4)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, r"x\.npy: cannot read: No such file"),
        (b"not an array", r"x\.npy: not a \.npy file"),
        (np.zeros(3, np.uint8), r"x\.npy: expected a 2-D array .* got shape \(3,\)"),
        (np.zeros((2, 2), np.int64), r"dtype kind 'u', got .* dtype int64"),
    ],
)
def test_open_npy_names_the_file(tmp_path, content, message):
    path = tmp_path / "x.npy"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        np.save(path, content)

    with pytest.raises(PipelineError, match=message):
        knn.open_npy(path, ndim=2, kinds="u")
