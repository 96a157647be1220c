"""What every stage script shares: logging, progress bars, clean failure.

Library modules never print.  Stage scripts call :func:`run` with their
``main`` function; it sets up a fixed log format on stderr and turns bad input
(:class:`~cifar_baselines.errors.PipelineError`, ``ValueError``, ``OSError``)
into one line ``<stage>: error: <message>`` and exit status 1.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from tqdm.auto import tqdm

from cifar_baselines.errors import PipelineError

T = TypeVar("T")

LOG_FORMAT = "%(asctime)s %(name)s: %(message)s"
DATE_FORMAT = "%H:%M:%S"


def get_logger(stage: str) -> logging.Logger:
    """Return the logger of one stage, writing ``HH:MM:SS stage: message``."""
    logger = logging.getLogger(stage)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT, DATE_FORMAT))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


def progress(iterable: Iterable[T] | None = None, **kwargs: Any) -> tqdm:
    """A progress bar on stderr; hidden when stderr is not a terminal."""
    kwargs.setdefault("disable", None)
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("leave", False)
    return tqdm(iterable, file=sys.stderr, **kwargs)


def run(stage: str, main: Callable[[], None]) -> None:
    """Run a stage's ``main``; exit 1 with a one-line message on bad input."""
    get_logger(stage)
    try:
        main()
    except (PipelineError, ValueError, OSError) as exc:
        print(f"{stage}: error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print(f"{stage}: interrupted", file=sys.stderr)
        sys.exit(130)
