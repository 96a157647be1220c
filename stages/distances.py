"""Stage distances: the L2 distance from every test image to every training image.

Reads ``knn.chunk_mib`` and ``data/features/{test,train}_features.npy``
(memory-mapped: uint8 pixels for ``features.kind: raw``, float32 descriptors
otherwise); writes ``data/knn/distances.npy``, float32 of shape
(n_test, n_train), row i holding the distances from test image i.  No k is
read here, so changing ``knn.k_values`` never recomputes the matrix.
"""

import time
from pathlib import Path

from cifar_baselines import knn
from cifar_baselines.atomic import atomic_path
from cifar_baselines.errors import PipelineError
from cifar_baselines.params import load_params
from cifar_baselines.stage import get_logger, progress, run

STAGE = "distances"
KEYS = ["knn.chunk_mib"]
FEATURES = Path("data/features")
OUT = Path("data/knn/distances.npy")


def main() -> None:
    chunk_mib = load_params(KEYS)["knn"]["chunk_mib"]
    log = get_logger(STAGE)

    test_path = FEATURES / "test_features.npy"
    train_path = FEATURES / "train_features.npy"
    test = knn.open_npy(test_path, ndim=2, kinds="uf")
    train = knn.open_npy(train_path, ndim=2, kinds="uf")
    if test.shape[1] != train.shape[1]:
        raise PipelineError(
            f"{test_path} has shape {test.shape} and {train_path} has shape "
            f"{train.shape}; expected the same number of values per image"
        )
    size_gb = test.shape[0] * train.shape[0] * 4 / 1e9
    log.info(
        "%d test x %d training images of %d values -> %s (float32, %.2f GB)",
        test.shape[0],
        train.shape[0],
        test.shape[1],
        OUT,
        size_gb,
    )

    start = time.perf_counter()
    with (
        progress(total=test.shape[0], desc=STAGE, unit="row") as bar,
        atomic_path(OUT) as tmp,
    ):
        knn.save_distance_matrix(
            tmp, test, train, chunk_mib=chunk_mib, on_chunk=bar.update
        )
    log.info("wrote %s in %.1f s", OUT, time.perf_counter() - start)


if __name__ == "__main__":
    run(STAGE, main)
