"""Reading the batches (format checks, refused pickles) and splitting them."""

from __future__ import annotations

import builtins
import codecs
import os
import pickle
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    N_PER_BATCH,
    TinyCifar,
    dump_pickle,
    random_images,
    write_batch,
    write_cifar_folder,
)
from sklearn.model_selection import train_test_split

from cifar_baselines.read_cifar import (
    BATCH_NAMES,
    CLASS_NAMES,
    CifarFormatError,
    load_batch,
    read_cifar,
    read_cifar_batch,
    read_cifar_uint8,
    read_label_names,
    save_rows,
    split_dataset,
    split_indices,
    split_sizes,
)

# --- reading ------------------------------------------------------------------


@pytest.mark.parametrize("style", ["py2", "py3"])
def test_load_batch_reads_both_pickle_styles(tmp_path: Path, style: str) -> None:
    # "py2" is the official archive, "py3" how Python 3 re-pickles it.
    data, labels = random_images(12, seed=1)
    write_batch(tmp_path / "data_batch_1", data, labels, style=style)

    got_data, got_labels = load_batch(tmp_path / "data_batch_1")

    assert got_data.dtype == np.uint8 and got_data.shape == (12, 3072)
    assert got_labels.dtype == np.int64 and got_labels.shape == (12,)
    np.testing.assert_array_equal(got_data, data)
    np.testing.assert_array_equal(got_labels, labels)


def test_read_cifar_batch_is_float32(tiny_cifar: TinyCifar) -> None:
    data, labels = read_cifar_batch(tiny_cifar.folder / "test_batch")

    assert data.dtype == np.float32 and data.shape == (N_PER_BATCH, 3072)
    assert labels.dtype == np.int64 and labels.shape == (N_PER_BATCH,)
    np.testing.assert_array_equal(data, tiny_cifar.data[-N_PER_BATCH:])
    np.testing.assert_array_equal(labels, tiny_cifar.labels[-N_PER_BATCH:])


def test_read_cifar_concatenates_in_batch_order(tiny_cifar: TinyCifar) -> None:
    data, labels = read_cifar(tiny_cifar.folder)

    n = N_PER_BATCH * len(BATCH_NAMES)
    assert data.dtype == np.float32 and data.shape == (n, 3072)
    assert labels.dtype == np.int64 and labels.shape == (n,)
    np.testing.assert_array_equal(data, tiny_cifar.data)
    np.testing.assert_array_equal(labels, tiny_cifar.labels)


def test_read_cifar_uint8_reports_each_batch(tiny_cifar: TinyCifar) -> None:
    seen: list[str] = []

    data, labels = read_cifar_uint8(tiny_cifar.folder, on_batch=seen.append)

    assert seen == list(BATCH_NAMES)
    assert data.dtype == np.uint8
    np.testing.assert_array_equal(data, tiny_cifar.data)
    np.testing.assert_array_equal(labels, tiny_cifar.labels)


def test_read_cifar_uint8_batches_of_unequal_size(tmp_path: Path) -> None:
    # The first batch is the smallest, so the preallocated array must grow.
    sizes = [3, 9, 4, 12, 1, 7]
    data, labels = random_images(sum(sizes), seed=2)
    write_cifar_folder(tmp_path, data, labels, sizes=sizes)

    got_data, got_labels = read_cifar_uint8(tmp_path)

    np.testing.assert_array_equal(got_data, data)
    np.testing.assert_array_equal(got_labels, labels)


def test_read_label_names(tiny_cifar: TinyCifar) -> None:
    assert read_label_names(tiny_cifar.folder) == CLASS_NAMES


def test_wrong_label_names_are_refused(tmp_path: Path) -> None:
    data, labels = random_images(12)
    write_cifar_folder(tmp_path, data, labels)
    names = [name.encode() for name in CLASS_NAMES]
    names[0], names[1] = names[1], names[0]
    dump_pickle({b"label_names": names}, tmp_path / "batches.meta")

    with pytest.raises(CifarFormatError, match=r"batches\.meta: label_names must be"):
        read_cifar(tmp_path)


def test_missing_batch_file(tmp_path: Path) -> None:
    data, labels = random_images(12)
    write_cifar_folder(tmp_path, data, labels)
    (tmp_path / "data_batch_4").unlink()

    with pytest.raises(CifarFormatError, match=r"data_batch_4: missing batch file"):
        read_cifar(tmp_path)


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(CifarFormatError, match=r"nowhere: no such folder"):
        read_cifar(tmp_path / "nowhere")


def _batch(n: int = 4) -> dict:
    data, labels = random_images(n)
    return {b"data": data, b"labels": [int(label) for label in labels]}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda b: b.pop(b"data"), r"missing key 'data'"),
        (lambda b: b.pop(b"labels"), r"missing key 'labels'"),
        (
            lambda b: b.update({b"data": b[b"data"].astype(np.float32)}),
            r"'data' must be a uint8 array of shape \(n, 3072\), got ndarray of "
            r"dtype float32 and shape \(4, 3072\)",
        ),
        (
            lambda b: b.update({b"data": b[b"data"][:, :100]}),
            r"'data' must have shape \(n, 3072\), got \(4, 100\)",
        ),
        (
            lambda b: b.update({b"data": [1, 2, 3]}),
            r"'data' must be a uint8 array .*, got list",
        ),
        (lambda b: b[b"labels"].pop(), r"3 labels for 4 images"),
        (lambda b: b[b"labels"].__setitem__(0, 10), r"labels must be in 0\.\.9"),
        (lambda b: b[b"labels"].__setitem__(0, -1), r"found -1\.\.\d"),
        (lambda b: b[b"labels"].__setitem__(0, "cat"), r"flat list of integers"),
    ],
)
def test_batch_format_is_checked(tmp_path: Path, change, message: str) -> None:
    batch = _batch()
    change(batch)
    dump_pickle(batch, tmp_path / "data_batch_1")

    with pytest.raises(CifarFormatError, match=rf"data_batch_1: .*{message}"):
        load_batch(tmp_path / "data_batch_1")


def test_batch_that_is_not_a_dict(tmp_path: Path) -> None:
    dump_pickle([1, 2, 3], tmp_path / "data_batch_1")

    with pytest.raises(CifarFormatError, match=r"expected a dict .*, got list"):
        load_batch(tmp_path / "data_batch_1")


def test_truncated_pickle(tmp_path: Path) -> None:
    path = tmp_path / "data_batch_1"
    dump_pickle(_batch(), path)
    path.write_bytes(path.read_bytes()[:1000])

    with pytest.raises(CifarFormatError, match=r"data_batch_1: not a readable pickle"):
        load_batch(path)


# --- refused pickles ----------------------------------------------------------


class _Payload:
    """An object whose unpickling would call ``func(*args)``."""

    def __init__(self, func, *args) -> None:
        self.func = func
        self.args = args

    def __reduce__(self):
        return self.func, self.args


HOSTILE = [
    pytest.param(
        lambda marker: _Payload(os.system, f"touch {marker}"),
        r"(posix|os)\.system",
        id="os.system",
    ),
    pytest.param(
        lambda marker: _Payload(subprocess.call, ["touch", str(marker)]),
        r"(subprocess|commands)\.call",
        id="subprocess.call",
    ),
    pytest.param(
        lambda marker: _Payload(builtins.open, str(marker), "w"),
        r"(io|builtins)\.open",
        id="open",
    ),
    pytest.param(
        lambda marker: _Payload(builtins.eval, f"open({str(marker)!r}, 'w')"),
        r"(__builtin__|builtins)\.eval",
        id="eval",
    ),
]


@pytest.mark.parametrize(("make_payload", "global_name"), HOSTILE)
@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_hostile_pickle_is_refused_before_running(
    tmp_path: Path, make_payload, global_name: str, protocol: int
) -> None:
    marker = tmp_path / "marker"
    # The payload comes first: at protocol 5 the array would be refused too.
    batch = {b"filenames": [make_payload(marker)], **_batch()}
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps(batch, protocol=protocol))

    with pytest.raises(
        CifarFormatError,
        match=rf"data_batch_1: refused to unpickle global {global_name}",
    ):
        load_batch(path)
    assert not marker.exists()


def test_hostile_meta_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    data, labels = random_images(12)
    write_cifar_folder(tmp_path, data, labels)
    meta = {b"label_names": _Payload(os.system, f"touch {marker}")}
    (tmp_path / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))

    with pytest.raises(CifarFormatError, match=r"batches\.meta: refused .*system"):
        read_cifar(tmp_path)
    assert not marker.exists()


def test_codecs_encode_is_allowed_for_latin1_only(tmp_path: Path) -> None:
    batch = _batch()
    batch[b"batch_label"] = _Payload(codecs.encode, "uryyb", "rot13")
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps(batch, protocol=2))

    with pytest.raises(CifarFormatError, match=r"allowed for latin1 text only"):
        load_batch(path)


# --- splitting ----------------------------------------------------------------


def test_split_matches_the_classic_train_test_split() -> None:
    data, labels = random_images(300, seed=3)

    got = split_dataset(data, labels, 0.9, seed=0)
    want = train_test_split(data, labels, test_size=0.1, random_state=0)

    assert got[0].shape == (270, 3072) and got[2].shape == (30, 3072)
    for a, b in zip(got, [want[0], want[2], want[1], want[3]], strict=True):
        np.testing.assert_array_equal(a, b)


def test_split_sizes_are_exact() -> None:
    # 1 - 0.9 is 0.09999999999999998 in floating point; 1 - 0.7 is
    # 0.30000000000000004, whose product with 60000 would round up to 18001.
    assert split_sizes(60_000, 0.9) == (54_000, 6_000)
    assert split_sizes(60_000, 0.7) == (42_000, 18_000)
    assert split_sizes(60_000, 0.75) == (45_000, 15_000)
    assert split_sizes(10, 0.95) == (9, 1)  # ceil(0.5): never an empty test split


def test_split_is_a_partition_and_depends_on_the_seed() -> None:
    labels = random_images(200, seed=4)[1]

    train_a, test_a = split_indices(labels, train_fraction=0.8, seed=1)
    train_b, test_b = split_indices(labels, train_fraction=0.8, seed=1)
    _, test_c = split_indices(labels, train_fraction=0.8, seed=2)

    assert len(train_a) == 160 and len(test_a) == 40
    np.testing.assert_array_equal(np.sort(np.r_[train_a, test_a]), np.arange(200))
    np.testing.assert_array_equal(train_a, train_b)
    np.testing.assert_array_equal(test_a, test_b)
    assert not np.array_equal(test_a, test_c)


def test_stratified_split_keeps_class_proportions() -> None:
    # 100, 60 and 40 images of three classes; a 0.9 split puts exactly a tenth
    # of each class in the test set.
    labels = np.repeat(np.array([0, 1, 2]), [100, 60, 40])
    labels = np.random.default_rng(5).permutation(labels)

    for seed in range(3):
        train, test = split_indices(
            labels, train_fraction=0.9, seed=seed, stratify=True
        )
        np.testing.assert_array_equal(np.bincount(labels[test]), [10, 6, 4])
        np.testing.assert_array_equal(np.bincount(labels[train]), [90, 54, 36])


def test_split_rejects_bad_input() -> None:
    data, labels = random_images(10)

    with pytest.raises(ValueError, match=r"got \(10, 3072\) and \(9,\)"):
        split_dataset(data, labels[:9], 0.9)
    with pytest.raises(
        ValueError, match=r"train_fraction must be in \(0, 1\), got 1\.0"
    ):
        split_dataset(data, labels, 1.0)
    with pytest.raises(ValueError, match=r"leaves 0 for training and 10 for testing"):
        split_dataset(data, labels, 0.01)
    with pytest.raises(ValueError, match=r"labels must have shape \(n_samples,\)"):
        split_indices(labels.reshape(2, 5), train_fraction=0.5)


# --- writing ------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.int64])
@pytest.mark.parametrize("chunk_rows", [1, 7, 1000])
def test_save_rows_writes_what_np_save_writes(
    tmp_path: Path, dtype, chunk_rows: int
) -> None:
    data = np.arange(50 * 6, dtype=dtype).reshape(50, 6)
    rows = np.random.default_rng(6).permutation(50)[:31]

    save_rows(tmp_path / "rows.npy", data, rows, chunk_rows=chunk_rows)
    np.save(tmp_path / "reference.npy", data[rows])

    assert (tmp_path / "rows.npy").read_bytes() == (
        tmp_path / "reference.npy"
    ).read_bytes()


def test_save_rows_checks_shapes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"got \(5,\) and \(2,\)"):
        save_rows(tmp_path / "x.npy", np.zeros(5), np.arange(2))
