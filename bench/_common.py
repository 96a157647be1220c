"""What the benchmark scripts share: interleaved timing and a note of the machine.

Other jobs may share the machine, so a benchmark never trusts one run: peers
are timed in turns within each round (the order rotating from round to
round, so a drift in load favours none of them) and compared by the ratio of
their medians.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from threadpoolctl import threadpool_info


def time_rounds(
    peers: dict[str, Callable[[], object]], repeats: int
) -> dict[str, list[float]]:
    """Seconds of every peer in every round; peers take turns within a round.

    A peer's return value is dropped before the next one starts, so large
    results do not pile up in memory.
    """
    names = list(peers)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            peers[name]()
            seconds[name].append(time.perf_counter() - start)
    return seconds


def report(
    title: str, seconds: dict[str, list[float]], baseline: str
) -> dict[str, dict[str, float | list[float]]]:
    """Print each peer's median time and its ratio to ``baseline``; return them.

    Two ratios: of the medians, and the median of the ratios within each
    round (peers of one round ran back to back, under much the same load).
    """
    base = statistics.median(seconds[baseline])
    width = max(map(len, seconds))
    print(f"\n{title}\n  ratios to {baseline}: of the medians / median per round")
    rows = {}
    for name, values in seconds.items():
        median = statistics.median(values)
        ratio = median / base
        per_round = statistics.median(
            v / b for v, b in zip(values, seconds[baseline], strict=True)
        )
        spread = ", ".join(f"{v:.2f}" for v in values)
        print(
            f"  {name:<{width}}  {median:8.2f} s  {ratio:5.2f}x / {per_round:5.2f}x"
            f"  [{spread}]"
        )
        rows[name] = {
            "median_s": median,
            "ratio_of_medians": ratio,
            "median_ratio_per_round": per_round,
            "seconds": values,
        }
    return rows


def machine() -> dict[str, object]:
    """CPU count, load, BLAS libraries and their threads, thread variables."""
    blas = [
        {
            key: info.get(key)
            for key in ("internal_api", "version", "architecture", "num_threads")
        }
        for info in threadpool_info()
    ]
    variables = {
        name: os.environ[name]
        for name in (
            "OPENBLAS_CORETYPE",
            "OPENBLAS_NUM_THREADS",
            "OPENBLAS_THREAD_TIMEOUT",
            "OMP_NUM_THREADS",
            "MKL_NUM_THREADS",
        )
        if name in os.environ
    }
    return {
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "thread_pools": blas,
        "environment": variables,
    }


def print_machine(info: dict[str, object]) -> None:
    print(f"cpus: {info['cpus']}, load average: {info['load_average']}")
    for pool in info["thread_pools"]:
        print(
            f"thread pool: {pool['internal_api']} {pool['version']} "
            f"({pool['architecture']}), {pool['num_threads']} threads"
        )
    print(f"thread variables: {info['environment'] or 'none set'}")


def finish(results: dict[str, object], json_path: Path | None) -> int:
    """Note the load average at the end; write ``results`` to ``json_path`` if given.

    Returns the exit status of the script: 0.
    """
    results["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    print(f"\nload average at the end: {results['load_average_after']}")
    if json_path is not None:
        json_path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


def parse_parts(
    parser: argparse.ArgumentParser, argv: list[str] | None, parts: Sequence[str]
) -> tuple[argparse.Namespace, list[str]]:
    """Parse ``argv``; return the arguments and the parts that ``--parts`` names.

    An unknown part ends the script with the parser's usage error.
    """
    args = parser.parse_args(argv)
    chosen = args.parts.split(",")
    unknown = set(chosen) - set(parts)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; choose from {tuple(parts)}")
    return args, chosen


def open_results(prepared: Path) -> dict[str, object]:
    """Print where the data comes from and the machine; return the results so far."""
    info = machine()
    print(f"prepared: {prepared}")
    print_machine(info)
    return {"prepared": str(prepared), "machine": info}
