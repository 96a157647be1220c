"""Image descriptors computed from CIFAR-10 pixel rows.

A prepared image is one uint8 row of 3072 values in CIFAR order: the 1024
values of the red plane, then green, then blue, each plane a 32 × 32 image
stored row by row.  :func:`compute_features` turns such rows into one float32
descriptor row per image, in the same row order, spreading chunks of images
over a pool of processes.

The stage ``features`` calls :func:`compute_features` for the descriptor
kinds (the ``features.kind`` params key); for ``raw`` it copies the prepared
uint8 files instead of converting them (see ``stages/features.py``).
``bench/features.py`` times the kinds and compares what they buy the
classifiers.

Descriptor kinds:

``raw``
    The pixels themselves as float32, values 0 to 255, 3072 columns.
``hog``
    Histograms of oriented gradients (scikit-image's ``hog``) on the colour
    image: at each pixel the gradient of the channel with the largest gradient
    magnitude is used (``channel_axis=-1``).  With kNN it scored a little
    higher than HOG of the grey-level image (0.506 against 0.492 at k = 10,
    8-pixel cells, on a 54,000 / 6,000 development split).  Blocks are
    normalised with L2-Hys.
``color_hist``
    For each of hue, saturation and value (HSV, each in [0, 1]) a histogram of
    ``bins`` equal-width bins over the 1024 pixels, divided by 1024 so that
    each channel's histogram sums to 1: ``3 * bins`` columns.
``hog+color_hist``
    The two descriptors side by side, HOG first.  Each block keeps its own
    normalisation (HOG blocks have unit L2-Hys norm, histograms sum to 1 per
    channel); no weight is applied between them.  Rescaling each block to
    unit length instead made the colour block dominate Euclidean distances
    (kNN at k = 10: 0.469 against 0.542 for plain concatenation, grey-level
    HOG, same split).  The rows are never rescaled with statistics of the
    data, so the descriptors of the test images do not depend on the
    training images; the MLP standardises its inputs itself.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

import numpy as np
from skimage.color import rgb2hsv
from skimage.feature import hog

IMAGE_SIDE = 32
N_CHANNELS = 3
N_PIXELS = IMAGE_SIDE * IMAGE_SIDE
ROW_LENGTH = N_CHANNELS * N_PIXELS

# The values ``features.kind`` accepts, in the order the params reference lists.
KINDS: tuple[str, ...] = ("raw", "hog", "color_hist", "hog+color_hist")


def to_images(rows: np.ndarray) -> np.ndarray:
    """View CIFAR pixel rows as channel-last images.

    Parameters
    ----------
    rows : ndarray of shape (n_images, 3072)
        Red plane, then green, then blue; each plane 32 × 32, row-major.

    Returns
    -------
    ndarray of shape (n_images, 32, 32, 3)
        A view of ``rows`` (no copy), indexed ``[image, y, x, channel]``.
    """
    rows = np.asarray(rows)
    if rows.ndim != 2 or rows.shape[1] != ROW_LENGTH:
        raise ValueError(
            f"expected pixel rows of shape (n_images, {ROW_LENGTH}), "
            f"got shape {rows.shape}"
        )

    # (n, 3072) -> (n, C, H, W) -> (n, H, W, C)
    planes = rows.reshape(-1, N_CHANNELS, IMAGE_SIDE, IMAGE_SIDE)
    return planes.transpose(0, 2, 3, 1)


def _hog_cells(pixels_per_cell: int, cells_per_block: int) -> int:
    """Return the number of HOG cells along one side, checking the two sizes."""
    if not 1 <= pixels_per_cell <= IMAGE_SIDE:
        raise ValueError(
            f"pixels_per_cell must be between 1 and {IMAGE_SIDE}, got {pixels_per_cell}"
        )
    cells = IMAGE_SIDE // pixels_per_cell
    if not 1 <= cells_per_block <= cells:
        raise ValueError(
            f"cells_per_block must be between 1 and the {cells} cells per side "
            f"that pixels_per_cell={pixels_per_cell} gives, got {cells_per_block}"
        )
    return cells


def feature_dim(
    kind: str,
    *,
    orientations: int = 9,
    pixels_per_cell: int = 8,
    cells_per_block: int = 2,
    bins: int = 10,
) -> int:
    """Return the number of columns :func:`compute_features` gives for ``kind``.

    ``raw`` has 3072 columns.  ``hog`` has ``blocks**2 * cells_per_block**2 *
    orientations`` with ``blocks = 32 // pixels_per_cell - cells_per_block +
    1`` blocks per side (324 with the defaults).  ``color_hist`` has ``3 *
    bins`` (30 with the defaults); a combination has the sum of its parts.
    The cell and block sizes are checked only for a kind that uses HOG.
    """
    _check_options(kind, orientations, bins)

    dims = {"raw": ROW_LENGTH, "color_hist": N_CHANNELS * bins}
    if "hog" in kind.split("+"):
        cells = _hog_cells(pixels_per_cell, cells_per_block)
        blocks = cells - cells_per_block + 1
        dims["hog"] = blocks**2 * cells_per_block**2 * orientations
    return sum(dims[part] for part in kind.split("+"))


def _check_options(kind: str, orientations: int, bins: int) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if orientations < 1:
        raise ValueError(f"orientations must be >= 1, got {orientations}")
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")


def hog_features(
    images: np.ndarray,
    *,
    orientations: int,
    pixels_per_cell: int,
    cells_per_block: int,
) -> np.ndarray:
    """HOG descriptor of each image, from its strongest-gradient channel.

    Parameters
    ----------
    images : ndarray of shape (n_images, 32, 32, 3)
    orientations, pixels_per_cell, cells_per_block : int
        Passed to ``skimage.feature.hog`` (square cells and blocks).

    Returns
    -------
    ndarray of shape (n_images, d_hog), float32
    """
    cell = (pixels_per_cell, pixels_per_cell)
    block = (cells_per_block, cells_per_block)
    out = [
        hog(
            image,
            orientations=orientations,
            pixels_per_cell=cell,
            cells_per_block=block,
            block_norm="L2-Hys",
            channel_axis=-1,
        )
        for image in images
    ]
    return np.asarray(out, dtype=np.float32).reshape(len(images), -1)


def color_histograms(images: np.ndarray, *, bins: int) -> np.ndarray:
    """Hue, saturation and value histograms of each image, each summing to 1.

    A channel value ``v`` in [0, 1] falls in bin ``min(floor(v * bins), bins -
    1)``.  Grey pixels (saturation 0) have hue 0 in scikit-image's conversion,
    so they count in the first hue bin together with reds.

    Parameters
    ----------
    images : ndarray of shape (n_images, 32, 32, 3), uint8
    bins : int

    Returns
    -------
    ndarray of shape (n_images, 3 * bins), float32
        Columns ``[c * bins, (c + 1) * bins)`` hold channel ``c`` (H, S, V).
    """
    n_images = len(images)
    hsv = rgb2hsv(images).reshape(n_images, N_PIXELS, N_CHANNELS)

    # Bin index of every pixel value, offset so that each (image, channel) pair
    # owns its own run of ``bins`` counters in one flat bincount.
    index = np.minimum((hsv * bins).astype(np.int64), bins - 1)
    owner = np.arange(n_images * N_CHANNELS).reshape(n_images, 1, N_CHANNELS)
    flat = (owner * bins + index).ravel()
    counts = np.bincount(flat, minlength=n_images * N_CHANNELS * bins)

    hist = counts.reshape(n_images, N_CHANNELS * bins) / N_PIXELS
    return hist.astype(np.float32)


def _describe(
    rows: np.ndarray,
    kind: str,
    orientations: int,
    pixels_per_cell: int,
    cells_per_block: int,
    bins: int,
) -> np.ndarray:
    """Descriptors of one chunk of rows; runs in a worker process."""
    if kind == "raw":
        return rows.astype(np.float32)

    images = to_images(rows)
    blocks = []
    for part in kind.split("+"):
        if part == "hog":
            block = hog_features(
                images,
                orientations=orientations,
                pixels_per_cell=pixels_per_cell,
                cells_per_block=cells_per_block,
            )
        else:
            block = color_histograms(images, bins=bins)
        blocks.append(block)
    return np.concatenate(blocks, axis=1)


def compute_features(
    rows: np.ndarray,
    *,
    kind: str = "raw",
    orientations: int = 9,
    pixels_per_cell: int = 8,
    cells_per_block: int = 2,
    bins: int = 10,
    n_jobs: int = 2,
    chunk_size: int = 1000,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Compute one descriptor row per image, in the order of ``rows``.

    Parameters
    ----------
    rows : ndarray of shape (n_images, 3072), uint8
        Prepared CIFAR pixel rows (see the module docstring for the layout).
    kind : {"raw", "hog", "color_hist", "hog+color_hist"}
        Which descriptor; see the module docstring.
    orientations, pixels_per_cell, cells_per_block : int
        HOG options: orientation bins, cell side in pixels, block side in cells.
    bins : int
        Bins per HSV channel of the colour histogram.
    n_jobs : int
        Worker processes.  With 1 (or for ``raw``, or when all images fit in
        one chunk) everything runs in this process; otherwise chunks of
        ``chunk_size`` images go to a process pool and each result is written
        at its chunk's offset, so the row order never depends on which worker
        finishes first.  The workers are started by a fork server, which
        imports the calling script as a module: a script that calls this
        function must keep its work under ``if __name__ == "__main__":``.
    chunk_size : int
        Images per chunk (the unit of work and of progress).
    progress : callable, optional
        Called with the number of images of each finished chunk, in completion
        order (``tqdm.update`` fits).

    Returns
    -------
    ndarray of shape (n_images, feature_dim(kind, ...)), float32
    """
    rows = np.asarray(rows)
    if rows.ndim != 2 or rows.shape[1] != ROW_LENGTH or rows.dtype != np.uint8:
        raise ValueError(
            f"expected uint8 pixel rows of shape (n_images, {ROW_LENGTH}), "
            f"got {rows.dtype} array of shape {rows.shape}"
        )
    if n_jobs < 1:
        raise ValueError(f"n_jobs must be >= 1, got {n_jobs}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    options = (kind, orientations, pixels_per_cell, cells_per_block, bins)
    dim = feature_dim(
        kind,
        orientations=orientations,
        pixels_per_cell=pixels_per_cell,
        cells_per_block=cells_per_block,
        bins=bins,
    )

    n_images = len(rows)
    out = np.empty((n_images, dim), dtype=np.float32)
    starts = range(0, n_images, chunk_size)
    report = progress if progress is not None else (lambda n: None)

    # Raw pixels only need a type conversion, and a single chunk gains nothing
    # from a pool: both run in this process.
    if n_jobs == 1 or n_images <= chunk_size or kind == "raw":
        for start in starts:
            stop = min(start + chunk_size, n_images)
            out[start:stop] = _describe(rows[start:stop], *options)
            report(stop - start)
        return out

    # forkserver: workers do not inherit the parent's threads (BLAS pools,
    # progress-bar monitors), which fork would copy in a half-locked state.
    # The server imports this module (and scikit-image) once; each pool's
    # workers are forked from it ready to run.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    pool = ProcessPoolExecutor(max_workers=n_jobs, mp_context=context)
    try:
        pending = {
            pool.submit(_describe, rows[start : start + chunk_size], *options): start
            for start in starts
        }
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                start = pending.pop(future)
                block = future.result()
                out[start : start + len(block)] = block
                report(len(block))
    finally:
        # On an error (or Ctrl-C) drop the chunks not started yet.
        pool.shutdown(wait=True, cancel_futures=True)
    return out
