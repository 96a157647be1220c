"""Benchmark: the kNN distance matrix and k sweep against their peers.

Runs on a prepared split (``data/prepared`` of this repository once the
pipeline has run, else the development copy in ``/tmp/devdata/prepared``, or
``--prepared DIR``).  Every part times its peers in the same process, in
turns, over ``--repeats`` rounds, and prints medians and their ratios:

``distances``
    :func:`knn.distance_matrix` of the float32 images against a bare
    ``test @ train.T`` of the same shapes and dtype, and against the classic
    formula ``sqrt(sum(test**2) + sum(train**2) - 2 test @ train.T)``.
``sweep``
    :func:`knn.sweep_k` for k = 1..20 on the memory-mapped matrix (the page
    cache warm: the file was just written and read once) against the classic
    loop that sorts one row at a time, for a single k.
``search``
    What the pipeline does, the matrix saved from the uint8 images and then
    swept, against faiss ``IndexFlatL2`` searching the 20 nearest and
    scikit-learn's brute-force ``kneighbors`` (both given float32 images made
    before the clock starts; both return neighbours only, not the matrix).
``memory``
    Peak resident memory of the ``distances`` stage run as a child process,
    and of a child computing the classic formula, against the matrix size.
``dvc``
    ``dvc repro`` in a temporary DVC repository under /tmp: the first run of
    distances and knn_sweep (hashing and caching included), a run with
    nothing changed, and a run after changing ``knn.k_values``.

    python bench/knn.py                      # distances, sweep, search, memory
    python bench/knn.py --parts dvc          # the DVC timings only
    python bench/knn.py --prepared DIR --repeats 5 --json out.json
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cifar_baselines import knn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import finish, open_results, parse_parts, report, time_rounds

REPO = Path(__file__).resolve().parents[1]
DEV_PREPARED = Path("/tmp/devdata/prepared")
PARTS = ("distances", "sweep", "search", "memory", "dvc")
K_SWEEP = list(range(1, 21))
K_CLASSIC = 9


def default_prepared() -> Path:
    """``data/prepared`` of the repository when the pipeline has made it."""
    repo = REPO / "data" / "prepared"
    return repo if (repo / "train_images.npy").is_file() else DEV_PREPARED


def load(prepared: Path) -> dict[str, np.ndarray]:
    return {
        "train": np.load(prepared / "train_images.npy", mmap_mode="r"),
        "test": np.load(prepared / "test_images.npy", mmap_mode="r"),
        "train_labels": np.load(prepared / "train_labels.npy"),
        "test_labels": np.load(prepared / "test_labels.npy"),
    }


# --------------------------------------------------------------------------- #
# The classic tutorial's code, as peers                                        #
# --------------------------------------------------------------------------- #


def classic_distances(test: np.ndarray, train: np.ndarray) -> np.ndarray:
    """The textbook expansion, one whole-matrix temporary per operation."""
    with np.errstate(invalid="ignore"):
        return np.sqrt(
            np.sum(test**2, axis=1, keepdims=True)
            + np.sum(train**2, axis=1)
            - 2 * test @ train.T
        )


def classic_predict(dists: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """One full sort per test row, then a vote."""
    predictions = np.empty(len(dists), dtype=labels.dtype)
    for i in range(len(dists)):
        closest = labels[np.argsort(dists[i])[:k]]
        predictions[i] = np.argmax(np.bincount(closest))
    return predictions


# --------------------------------------------------------------------------- #
# Parts                                                                        #
# --------------------------------------------------------------------------- #


def part_distances(data: dict, repeats: int) -> dict:
    test = np.asarray(data["test"], dtype=np.float32)
    train = np.asarray(data["train"], dtype=np.float32)
    peers = {
        "bare test @ train.T": lambda: test @ train.T,
        "knn.distance_matrix": lambda: knn.distance_matrix(test, train),
        "classic formula": lambda: classic_distances(test, train),
    }
    seconds = time_rounds(peers, repeats)
    title = f"distances, float32 {test.shape} x {train.shape}, {repeats} rounds"
    return report(title, seconds, "bare test @ train.T")


def part_sweep(data: dict, matrix: Path, repeats: int) -> dict:
    labels_train, labels_test = data["train_labels"], data["test_labels"]

    def sweep() -> knn.SweepResult:
        dists = np.load(matrix, mmap_mode="r")
        return knn.sweep_k(dists, labels_train, labels_test, K_SWEEP)

    def classic() -> np.ndarray:
        return classic_predict(np.load(matrix, mmap_mode="r"), labels_train, K_CLASSIC)

    # Warm the page cache, and check the two agree on the k they share.
    result = sweep()
    agree = np.mean(
        classic()
        == knn.knn_predict(np.load(matrix, mmap_mode="r"), labels_train, K_CLASSIC)
    )
    print(
        f"\nsweep: best k = {result.best_k}, accuracy {result.best_accuracy:.4f}; "
        f"classic loop agrees with knn_predict on {agree:.2%} of rows at "
        f"k = {K_CLASSIC}"
    )

    peers = {
        f"classic loop, one k ({K_CLASSIC})": classic,
        f"knn.sweep_k, k = 1..{K_SWEEP[-1]}": sweep,
    }
    seconds = time_rounds(peers, repeats)
    title = f"sweep over the memory-mapped matrix (page cache warm), {repeats} rounds"
    rows = report(title, seconds, f"classic loop, one k ({K_CLASSIC})")
    rows["accuracy"] = {
        str(k): float(a) for k, a in zip(result.k_values, result.accuracy, strict=True)
    }
    return rows


def part_search(data: dict, matrix: Path, repeats: int) -> dict:
    import faiss
    from sklearn.neighbors import KNeighborsClassifier

    test32 = np.asarray(data["test"], dtype=np.float32)
    train32 = np.asarray(data["train"], dtype=np.float32)
    labels_train, labels_test = data["train_labels"], data["test_labels"]
    k_max = K_SWEEP[-1]
    found: dict[str, np.ndarray] = {}

    def pipeline() -> None:
        knn.save_distance_matrix(matrix, data["test"], data["train"])
        dists = np.load(matrix, mmap_mode="r")
        knn.sweep_k(dists, labels_train, labels_test, K_SWEEP)

    def flat_l2() -> None:
        index = faiss.IndexFlatL2(train32.shape[1])
        index.add(train32)
        found["faiss"] = index.search(test32, k_max)[1]

    def sklearn_brute() -> None:
        model = KNeighborsClassifier(n_neighbors=k_max, algorithm="brute")
        found["sklearn"] = model.fit(train32, labels_train).kneighbors(test32)[1]

    peers = {
        "faiss IndexFlatL2, 20 nearest": flat_l2,
        "distances + sweep (pipeline)": pipeline,
        "sklearn brute kneighbors, 20": sklearn_brute,
    }
    seconds = time_rounds(peers, repeats)
    title = (
        f"whole search, {len(test32)} x {len(train32)}, faiss threads "
        f"{faiss.omp_get_max_threads()}, {repeats} rounds"
    )
    rows = report(title, seconds, "faiss IndexFlatL2, 20 nearest")

    ours = knn._nearest(np.load(matrix, mmap_mode="r"), k_max)
    for name, neighbours in found.items():
        same = np.mean(np.sort(ours, axis=1) == np.sort(neighbours, axis=1))
        print(f"  the 20 nearest of {name} equal the pipeline's for {same:.4%}")
    return rows


RSS_CHILD = """
import resource, subprocess, sys
subprocess.run(sys.argv[1:], check=True)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""

CLASSIC_CHILD = """
import sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from knn import classic_distances
test = np.load(sys.argv[2] + "/test_images.npy").astype(np.float32)
train = np.load(sys.argv[2] + "/train_images.npy").astype(np.float32)
classic_distances(test, train)
"""


def peak_rss(command: list[str], cwd: Path) -> tuple[int, float]:
    """Peak resident bytes of ``command`` run as a grandchild, and its seconds."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", RSS_CHILD, *command],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    )
    seconds = time.perf_counter() - start
    return int(done.stdout.split()[-1]) * 1024, seconds


def part_memory(data: dict, prepared: Path, work: Path) -> dict:
    stage_dir = work / "stage"
    (stage_dir / "data").mkdir(parents=True)
    shutil.copy(REPO / "params.yaml", stage_dir / "params.yaml")
    (stage_dir / "data" / "prepared").symlink_to(prepared.resolve())
    matrix_bytes = len(data["test"]) * len(data["train"]) * 4

    stage_rss, stage_s = peak_rss(
        [sys.executable, str(REPO / "stages" / "distances.py")], stage_dir
    )
    classic_rss, classic_s = peak_rss(
        [
            sys.executable,
            "-c",
            CLASSIC_CHILD,
            str(Path(__file__).parent),
            str(prepared),
        ],
        work,
    )

    print(f"\npeak resident memory; the matrix is {matrix_bytes / 1e9:.2f} GB")
    rows = {}
    for name, rss, seconds in (
        ("distances stage", stage_rss, stage_s),
        ("classic formula", classic_rss, classic_s),
    ):
        ratio = rss / matrix_bytes
        print(
            f"  {name:<16} {rss / 1e9:6.2f} GB  {ratio:5.2f}x the matrix  "
            f"({seconds:.1f} s)"
        )
        rows[name] = {"peak_rss_bytes": rss, "ratio": ratio, "seconds": seconds}
    return rows


# --------------------------------------------------------------------------- #
# DVC                                                                          #
# --------------------------------------------------------------------------- #


def project_files() -> list[str]:
    """What git tracks, plus new files it does not ignore."""
    listing = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout
    return sorted({os.fsdecode(n) for n in listing.split(b"\0") if n})


def raw_beside(prepared: Path) -> Path:
    """The unpacked batches next to a prepared folder, in either layout."""
    for candidate in (
        prepared.parent / "raw" / "cifar-10-batches-py",
        prepared.parent / "cifar-10-batches-py",
    ):
        if candidate.is_dir():
            return candidate
    raise SystemExit(f"no cifar-10-batches-py beside {prepared}")


def part_dvc(prepared: Path, work: Path, repeats: int) -> dict:
    """``dvc repro`` timings in a copy of the project under ``work``.

    ``fetch`` and ``prepare`` are not run: their outputs are copied in and
    recorded with ``dvc commit``, which writes their ``dvc.lock`` entries as
    if they had run.  ``dvc repro knn_sweep`` then runs ``distances`` and
    ``knn_sweep`` only, and a second ``dvc repro knn_sweep`` checks the whole
    chain from ``fetch`` and finds nothing to do.
    """
    project = work / "project"
    for rel in project_files():
        if (REPO / rel).is_file():
            (project / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, project / rel)
    shutil.copytree(raw_beside(prepared), project / "data/raw/cifar-10-batches-py")
    shutil.copytree(prepared, project / "data/prepared")
    (project / ".dvc" / "config.local").write_text(
        f"[core]\n    site_cache_dir = {work / 'dvc-site'}\n"
        "    analytics = false\n    check_update = false\n"
    )

    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"

    def sh(*args: str) -> tuple[float, str]:
        start = time.perf_counter()
        done = subprocess.run(
            args, cwd=project, env=env, capture_output=True, text=True
        )
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(args)} failed:\n{done.stdout}{done.stderr}")
        return time.perf_counter() - start, done.stdout + done.stderr

    git = ("git", "-c", "user.name=bench", "-c", "user.email=bench@localhost")
    sh("git", "init", "-q")
    sh(*git, "add", "-A")
    sh(*git, "commit", "-q", "-m", "project copy")

    commit_s, _ = sh("dvc", "commit", "-f", "fetch", "prepare")
    first_s, log = sh("dvc", "repro", "knn_sweep")
    stage_s = float(re.search(r"distances: wrote \S+ in ([\d.]+) s", log).group(1))
    noop = [sh("dvc", "repro", "knn_sweep")[0] for _ in range(repeats)]
    params = project / "params.yaml"
    params.write_text(
        re.sub(r"k_values: \[.*\]", "k_values: [1, 3, 5, 7, 9]", params.read_text())
    )
    k_s, log = sh("dvc", "repro", "knn_sweep")
    skipped = "Stage 'distances' didn't change, skipping" in log

    rows = {
        "dvc commit fetch prepare": commit_s,
        "dvc repro (distances + knn_sweep)": first_s,
        "  of which the distances stage's own work": stage_s,
        "dvc repro, nothing changed (median)": statistics.median(noop),
        "dvc repro after changing knn.k_values": k_s,
    }
    print(f"\ndvc, in {project}")
    for name, seconds in rows.items():
        print(f"  {name:<42} {seconds:7.2f} s")
    print(f"  no-op runs: {', '.join(f'{s:.2f}' for s in noop)}")
    print(f"  distances skipped after the k change: {skipped}")
    return {**rows, "noop_seconds": noop, "distances_skipped_on_k_change": skipped}


# --------------------------------------------------------------------------- #


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prepared", type=Path, default=default_prepared())
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--parts",
        default="distances,sweep,search,memory",
        help=f"comma-separated, from {', '.join(PARTS)}",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument(
        "--test-rows",
        type=int,
        help="use only the first N test images (a quick check; not for the "
        "memory and dvc parts, which run on the whole prepared folder)",
    )
    args, parts = parse_parts(parser, argv, PARTS)

    data = load(args.prepared)
    if args.test_rows:
        data["test"] = data["test"][: args.test_rows]
        data["test_labels"] = data["test_labels"][: args.test_rows]
    results = open_results(args.prepared)

    with tempfile.TemporaryDirectory(prefix="bench-knn-", dir=args.workdir) as tmp:
        work = Path(tmp)
        matrix = work / "distances.npy"
        if "distances" in parts:
            results["distances"] = part_distances(data, args.repeats)
        if "search" in parts:
            results["search"] = part_search(data, matrix, args.repeats)
        if "sweep" in parts:
            if not matrix.exists():
                knn.save_distance_matrix(matrix, data["test"], data["train"])
            results["sweep"] = part_sweep(data, matrix, args.repeats)
        if "memory" in parts:
            matrix.unlink(missing_ok=True)
            results["memory"] = part_memory(data, args.prepared, work)
        if "dvc" in parts:
            matrix.unlink(missing_ok=True)
            results["dvc"] = part_dvc(args.prepared, work, args.repeats)

    return finish(results, args.json)


if __name__ == "__main__":
    sys.exit(main())
