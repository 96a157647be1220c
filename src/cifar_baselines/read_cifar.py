"""Read the CIFAR-10 python batches and split them into train and test sets.

The batches are Python pickles.  Unpickling can run arbitrary code, so they are
read with :class:`_BatchUnpickler`, which resolves only the few globals a batch
needs to rebuild its numpy array and refuses every other one before anything
is called.  Every batch is then checked for the keys, dtypes, shapes and label
range of the official format; errors name the file.
"""

from __future__ import annotations

import codecs
import os
import pickle
from collections.abc import Callable, Iterator
from fractions import Fraction
from math import ceil
from pathlib import Path
from typing import Any

import numpy as np

from cifar_baselines.errors import PipelineError

# The ten CIFAR-10 classes, indexed by label (the order of ``batches.meta``).
CLASS_NAMES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

# The batch files of the python archive, in the order they are concatenated.
BATCH_NAMES: tuple[str, ...] = (
    "data_batch_1",
    "data_batch_2",
    "data_batch_3",
    "data_batch_4",
    "data_batch_5",
    "test_batch",
)
META_NAME = "batches.meta"

# One image: 32 x 32 pixels in three colour planes (R, then G, then B).
N_FEATURES = 3 * 32 * 32


class CifarFormatError(PipelineError):
    """A batch file that is not in the CIFAR-10 python format."""


class _RefusedGlobal(pickle.UnpicklingError):
    def __init__(self, module: str, name: str) -> None:
        super().__init__(f"{module}.{name}")
        self.qualified = f"{module}.{name}"


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """``codecs.encode`` limited to the one use a pickle has for it.

    Python 3 writes ``bytes`` at pickle protocol 2 as
    ``_codecs.encode(text, "latin1")``; no other codec is ever needed.
    """
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(
            f"_codecs.encode is allowed for latin1 text only, got {encoding!r}"
        )
    return codecs.encode(text, "latin1")


# What ``ndarray.__reduce__`` names for rebuilding an array; numpy 2 moved it
# from ``numpy.core`` to ``numpy._core``, and the official batches (written by
# Python 2 and an old numpy) use the old name.
_reconstruct = np.empty(0).__reduce__()[0]

_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class _BatchUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals in :data:`_ALLOWED_GLOBALS`.

    Built-in containers, numbers and strings need no global; anything else
    (``os.system``, ``builtins.eval``, ``subprocess.Popen``...) raises before
    it could be called.
    """

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise _RefusedGlobal(module, name) from None


def _unpickle(path: Path) -> Any:
    """Load one pickle file with :class:`_BatchUnpickler`."""
    try:
        with path.open("rb") as f:
            return _BatchUnpickler(f, encoding="bytes").load()
    except _RefusedGlobal as exc:
        raise CifarFormatError(
            f"{path}: refused to unpickle global {exc.qualified} "
            "(a CIFAR batch needs only numpy array reconstruction)"
        ) from None
    except OSError:
        raise
    except Exception as exc:
        # Whatever a corrupt or hostile pickle makes the allowed constructors
        # raise is a format error of this file, not a bug here.
        raise CifarFormatError(
            f"{path}: not a readable pickle ({type(exc).__name__}: {exc})"
        ) from None


def _field(batch: dict, key: str, path: Path) -> Any:
    """Return ``batch[key]`` under its bytes key (or its str key)."""
    for candidate in (key.encode("ascii"), key):
        if candidate in batch:
            return batch[candidate]
    raise CifarFormatError(f"{path}: missing key {key!r}")


def load_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read one batch file as stored: uint8 images and int64 labels.

    Parameters
    ----------
    path : str or path-like
        A batch file such as ``data_batch_1`` or ``test_batch``.

    Returns
    -------
    data : ndarray of shape (n, 3072), dtype uint8
        One row per image: 1024 red, then 1024 green, then 1024 blue values,
        each plane in row-major order.
    labels : ndarray of shape (n,), dtype int64
        Class indices in 0..9 (see :data:`CLASS_NAMES`).

    Raises
    ------
    CifarFormatError
        When the file is not a pickle of the official batch format, or would
        need any global other than numpy array reconstruction to load.
    """
    path = Path(path)
    batch = _unpickle(path)
    if not isinstance(batch, dict):
        raise CifarFormatError(
            f"{path}: expected a dict of batch fields, got {type(batch).__name__}"
        )

    data = _field(batch, "data", path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        found = (
            f"ndarray of dtype {data.dtype} and shape {data.shape}"
            if isinstance(data, np.ndarray)
            else type(data).__name__
        )
        raise CifarFormatError(
            f"{path}: 'data' must be a uint8 array of shape (n, {N_FEATURES}), "
            f"got {found}"
        )
    if data.shape[1] != N_FEATURES:
        raise CifarFormatError(
            f"{path}: 'data' must have shape (n, {N_FEATURES}), got {data.shape}"
        )

    raw_labels = _field(batch, "labels", path)
    try:
        labels = np.asarray(raw_labels)
    except (TypeError, ValueError):
        labels = np.asarray([], dtype=object)
    if labels.ndim != 1 or (labels.size and labels.dtype.kind not in "iu"):
        raise CifarFormatError(f"{path}: 'labels' must be a flat list of integers")
    labels = labels.astype(np.int64)
    if len(labels) != len(data):
        raise CifarFormatError(
            f"{path}: {len(labels)} labels for {len(data)} images; expected "
            "one label per row of 'data'"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= len(CLASS_NAMES)):
        raise CifarFormatError(
            f"{path}: labels must be in 0..{len(CLASS_NAMES) - 1}, found "
            f"{labels.min()}..{labels.max()}"
        )

    return np.ascontiguousarray(data), labels


def read_label_names(directory: str | os.PathLike) -> tuple[str, ...]:
    """Read the class names of ``batches.meta`` and check them.

    Returns
    -------
    names : tuple of str
        The ten names, equal to :data:`CLASS_NAMES`.

    Raises
    ------
    CifarFormatError
        When the file has no ``label_names`` or they differ from
        :data:`CLASS_NAMES` (which would mean the labels mean something else).
    """
    path = Path(directory) / META_NAME
    meta = _unpickle(path)
    if not isinstance(meta, dict):
        raise CifarFormatError(f"{path}: expected a dict, got {type(meta).__name__}")

    raw = _field(meta, "label_names", path)
    try:
        names = tuple(n.decode("ascii") if isinstance(n, bytes) else n for n in raw)
    except (TypeError, UnicodeDecodeError):
        names = ()
    if names != CLASS_NAMES:
        raise CifarFormatError(
            f"{path}: label_names must be {list(CLASS_NAMES)}, got {list(names)}"
        )
    return names


def iter_batches(
    directory: str | os.PathLike,
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """Yield ``(name, data, labels)`` for each batch of :data:`BATCH_NAMES`.

    ``data`` is uint8 of shape (n, 3072) and ``labels`` int64 of shape (n,), as
    :func:`load_batch` returns them.  ``batches.meta``, when present, is
    checked first with :func:`read_label_names`.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CifarFormatError(f"{directory}: no such folder of CIFAR-10 batches")
    if (directory / META_NAME).exists():
        read_label_names(directory)

    for name in BATCH_NAMES:
        path = directory / name
        if not path.is_file():
            raise CifarFormatError(f"{path}: missing batch file")
        yield (name, *load_batch(path))


def read_cifar_uint8(
    directory: str | os.PathLike,
    *,
    on_batch: Callable[[str], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Read all batches into one uint8 array, one batch at a time.

    The array is allocated once, for as many rows as the first batch times the
    number of batches (grown only if later batches are larger), so the peak
    memory is the pixels themselves plus one batch being unpickled.

    Parameters
    ----------
    directory : str or path-like
        The ``cifar-10-batches-py`` folder.
    on_batch : callable, optional
        Called with each batch's file name after it is read (for a progress
        bar).

    Returns
    -------
    data : ndarray of shape (n_images, 3072), dtype uint8
        ``data_batch_1`` to ``data_batch_5``, then ``test_batch``.
    labels : ndarray of shape (n_images,), dtype int64
    """
    data = np.empty((0, N_FEATURES), dtype=np.uint8)
    labels = []
    filled = 0

    for name, batch, batch_labels in iter_batches(directory):
        n = len(batch)
        if filled + n > len(data):
            capacity = max(filled + n, n * len(BATCH_NAMES))
            grown = np.empty((capacity, N_FEATURES), dtype=np.uint8)
            grown[:filled] = data[:filled]
            data = grown
        data[filled : filled + n] = batch
        labels.append(batch_labels)
        filled += n
        del batch
        if on_batch is not None:
            on_batch(name)

    return data[:filled], np.concatenate(labels)


def read_cifar_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read one batch file as float32 images and int64 labels.

    :func:`load_batch` with the pixels converted to float32: returns ``data``
    of shape (n, 3072), values 0..255, and ``labels`` of shape (n,).
    """
    data, labels = load_batch(path)
    return data.astype(np.float32), labels


def read_cifar(directory: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read the whole data set as float32 images and int64 labels.

    Parameters
    ----------
    directory : str or path-like
        The ``cifar-10-batches-py`` folder.

    Returns
    -------
    data : ndarray of shape (n_images, 3072), dtype float32
        ``data_batch_1`` to ``data_batch_5``, then ``test_batch``: 60,000 rows
        for CIFAR-10.
    labels : ndarray of shape (n_images,), dtype int64
    """
    data, labels = read_cifar_uint8(directory)
    return data.astype(np.float32), labels


def split_sizes(n_samples: int, train_fraction: float) -> tuple[int, int]:
    """Return ``(n_train, n_test)``: how ``n_samples`` rows are split.

    ``n_test = ceil((1 - train_fraction) * n_samples)``, as scikit-learn
    computes it for ``test_size=1 - train_fraction``, but in exact decimal
    arithmetic: in floating point ``1 - 0.7`` is ``0.30000000000000004``, and
    the ceiling of its product with 60000 would move one image too many.
    """
    exact = (1 - Fraction(repr(float(train_fraction)))) * n_samples
    n_test = ceil(exact)
    return n_samples - n_test, n_test


def split_indices(
    labels: np.ndarray,
    train_fraction: float,
    seed: int = 0,
    stratify: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Shuffle and split row indices with scikit-learn's ``train_test_split``.

    Parameters
    ----------
    labels : ndarray of shape (n_samples,)
        Class of every row; used only when ``stratify`` is true, and for its
        length.
    train_fraction : float
        Share of rows in the training split, in (0, 1).
    seed : int
        ``random_state`` of the shuffle.
    stratify : bool
        Keep the class proportions of ``labels`` in both splits.

    Returns
    -------
    train_idx : ndarray of shape (n_train,), dtype int64
    test_idx : ndarray of shape (n_test,), dtype int64
        Row indices in shuffled order, exactly those ``train_test_split``
        applies to the data for the same arguments.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must have shape (n_samples,), got {labels.shape}")
    if not 0 < train_fraction < 1:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction!r}")

    n_train, n_test = split_sizes(len(labels), train_fraction)
    if n_train < 1 or n_test < 1:
        raise ValueError(
            f"train_fraction={train_fraction!r} of {len(labels)} images leaves "
            f"{n_train} for training and {n_test} for testing; both need at "
            "least one"
        )

    # Imported here: scikit-learn takes seconds to import, and a stage that
    # fails on a bad params value or batch file should not wait for it.
    from sklearn.model_selection import train_test_split

    rows = np.arange(len(labels), dtype=np.int64)
    train_idx, test_idx = train_test_split(
        rows,
        test_size=n_test,
        random_state=seed,
        shuffle=True,
        stratify=labels if stratify else None,
    )
    return train_idx, test_idx


def split_dataset(
    data: np.ndarray,
    labels: np.ndarray,
    split: float,
    seed: int = 0,
    stratify: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Shuffle and split images and labels into train and test sets.

    With ``split=0.9`` and ``seed=0`` this is the classic
    ``train_test_split(data, labels, test_size=0.1, random_state=0)``: 54,000
    training and 6,000 test images out of 60,000.

    Parameters
    ----------
    data : ndarray of shape (n_samples, n_features)
    labels : ndarray of shape (n_samples,)
    split, seed, stratify
        ``train_fraction``, ``seed`` and ``stratify`` of :func:`split_indices`.

    Returns
    -------
    data_train : ndarray of shape (n_train, n_features)
    labels_train : ndarray of shape (n_train,)
    data_test : ndarray of shape (n_test, n_features)
    labels_test : ndarray of shape (n_test,)
    """
    data = np.asarray(data)
    labels = np.asarray(labels)
    if data.ndim != 2 or labels.shape != data.shape[:1]:
        raise ValueError(
            "data must have shape (n_samples, n_features) and labels "
            f"(n_samples,), got {data.shape} and {labels.shape}"
        )

    train_idx, test_idx = split_indices(
        labels, train_fraction=split, seed=seed, stratify=stratify
    )
    return data[train_idx], labels[train_idx], data[test_idx], labels[test_idx]


def save_rows(
    dest: str | os.PathLike,
    data: np.ndarray,
    rows: np.ndarray,
    *,
    chunk_rows: int = 4096,
) -> None:
    """Write ``data[rows]`` to ``dest`` in ``.npy`` format, a chunk at a time.

    The file is byte for byte what ``np.save(dest, data[rows])`` writes, but
    the gathered copy of the rows is never held in memory whole.  ``dest`` is
    written in place: call it inside :func:`cifar_baselines.atomic.atomic_path`.

    Parameters
    ----------
    dest : str or path-like
    data : ndarray of shape (n_samples, n_features)
    rows : ndarray of shape (n_rows,)
        Indices into the first axis of ``data``.
    chunk_rows : int
        Rows gathered per write.
    """
    data = np.asarray(data)
    rows = np.asarray(rows)
    if data.ndim != 2 or rows.ndim != 1:
        raise ValueError(
            "data must have shape (n_samples, n_features) and rows (n_rows,), "
            f"got {data.shape} and {rows.shape}"
        )

    header = {
        "descr": np.lib.format.dtype_to_descr(data.dtype),
        "fortran_order": False,
        "shape": (len(rows), data.shape[1]),
    }
    with open(dest, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        for start in range(0, len(rows), chunk_rows):
            f.write(data[rows[start : start + chunk_rows]].tobytes())
