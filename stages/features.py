"""Stage features: what the classifiers see, one row per prepared image.

Reads the ``features`` params section and ``data/prepared/{train,test}_images.npy``;
writes ``data/features/{train,test}_features.npy``, row i of each describing
row i of the prepared file of the same part:

- ``features.kind: raw``: byte-for-byte copies of the prepared files, uint8 of
  shape (n, 3072).  Converting them to float32 would hold the same values in
  four times the bytes (0.66 GB instead of 0.17 GB for the training split, in
  the workspace and in the DVC cache), and the stages reading them would take
  their float paths instead of the uint8 ones; the copy keeps every later
  result exactly what it was before this stage existed.  DVC stores the copy
  and the prepared file as one cache object (same content, same hash).
- any other kind: float32 descriptors of shape (n, d), computed by
  :func:`cifar_baselines.features.compute_features` over two processes (see
  that module for the kinds and d).

Every descriptor key is declared to DVC, so changing a key the chosen kind
does not use (``features.color_bins`` with ``hog``, say) re-runs this stage;
it then writes the same bytes, and DVC re-runs no stage after it.
"""

import shutil
import time
from pathlib import Path

import numpy as np

from cifar_baselines import features, knn
from cifar_baselines.atomic import atomic_path
from cifar_baselines.errors import PipelineError
from cifar_baselines.params import PARAMS_FILE, load_params
from cifar_baselines.stage import get_logger, progress, run

STAGE = "features"
KEYS = [
    "features.kind",
    "features.hog_orientations",
    "features.hog_pixels_per_cell",
    "features.hog_cells_per_block",
    "features.color_bins",
]
PREPARED = Path("data/prepared")
OUT = Path("data/features")
PARTS = ("train", "test")
N_JOBS = 2


def _check_hog(pixels_per_cell: int, cells_per_block: int) -> None:
    """Refuse HOG cells or blocks that do not fit a 32 x 32 image, naming the key."""
    side = features.IMAGE_SIDE
    if pixels_per_cell > side:
        raise PipelineError(
            f"{PARAMS_FILE}: 'features.hog_pixels_per_cell' must be at most {side}, "
            f"the image side, got {pixels_per_cell}"
        )
    cells = side // pixels_per_cell
    if cells_per_block > cells:
        raise PipelineError(
            f"{PARAMS_FILE}: 'features.hog_cells_per_block' must be at most {cells}, "
            f"the cells per image side that 'features.hog_pixels_per_cell' = "
            f"{pixels_per_cell} gives, got {cells_per_block}"
        )


def main() -> None:
    params = load_params(KEYS)["features"]
    log = get_logger(STAGE)
    kind = params["kind"]
    if "hog" in kind:
        _check_hog(params["hog_pixels_per_cell"], params["hog_cells_per_block"])

    sources = {part: PREPARED / f"{part}_images.npy" for part in PARTS}
    images = {
        part: knn.open_npy(path, ndim=2, kinds="u") for part, path in sources.items()
    }
    for part, path in sources.items():
        if images[part].shape[1] != features.ROW_LENGTH:
            raise PipelineError(
                f"{path} has shape {images[part].shape}; expected pixel rows of "
                f"shape (n_images, {features.ROW_LENGTH})"
            )
    n_images = sum(len(rows) for rows in images.values())

    start = time.perf_counter()
    if kind == "raw":
        log.info("kind raw: copying %d prepared images unchanged (uint8)", n_images)
        with atomic_path(OUT, directory=True) as tmp:
            for part, path in sources.items():
                shutil.copyfile(path, tmp / f"{part}_features.npy")
        log.info("wrote %s in %.1f s", OUT, time.perf_counter() - start)
        return

    options = {
        "kind": kind,
        "orientations": params["hog_orientations"],
        "pixels_per_cell": params["hog_pixels_per_cell"],
        "cells_per_block": params["hog_cells_per_block"],
        "bins": params["color_bins"],
    }
    log.info(
        "kind %s: %d images -> %d float32 values each, %d processes",
        kind,
        n_images,
        features.feature_dim(**options),
        N_JOBS,
    )
    with (
        progress(total=n_images, desc=STAGE, unit="image") as bar,
        atomic_path(OUT, directory=True) as tmp,
    ):
        for part in PARTS:
            described = features.compute_features(
                images[part], **options, n_jobs=N_JOBS, progress=bar.update
            )
            np.save(tmp / f"{part}_features.npy", described, allow_pickle=False)
    log.info("wrote %s in %.1f s", OUT, time.perf_counter() - start)


if __name__ == "__main__":
    run(STAGE, main)
