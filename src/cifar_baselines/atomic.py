"""Write outputs under a temporary name and rename them into place.

A stage that fails half way must leave no partial file where DVC or a user
would take it for a finished output.  Every writer in the project goes through
:func:`atomic_path`, which hands out a temporary name in the destination's own
folder (so the final ``os.replace`` stays on one file system) and renames it
only when the ``with`` block ends without an exception.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def atomic_path(dest: str | os.PathLike, *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; rename it to ``dest`` on success.

    With ``directory=True`` the temporary path is an empty folder and an
    existing ``dest`` folder is replaced whole.  On an exception the temporary
    path is removed and ``dest`` is left as it was.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".tmp-{dest.name}-"
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=dest.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, dir=dest.parent)
        os.close(fd)
        tmp = Path(name)

    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise

    if not directory:
        # mkstemp creates files readable by the owner only; give the output
        # the permissions an ordinary ``open`` would have.
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o666 & ~umask)
    if directory and dest.exists():
        _remove(dest)
    os.replace(tmp, dest)


def write_json(dest: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON with a trailing newline, atomically."""
    with atomic_path(dest) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def write_csv(
    dest: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence[Any]]
) -> None:
    """Write a CSV file with a header row, atomically."""
    with atomic_path(dest) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def save_npy(dest: str | os.PathLike, array: np.ndarray) -> None:
    """Save one array in ``.npy`` format, atomically."""
    with atomic_path(dest) as tmp, tmp.open("wb") as f:
        np.save(f, array, allow_pickle=False)
