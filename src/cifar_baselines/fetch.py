"""Download, verify and unpack the CIFAR-10 python archive.

The archive comes from an http(s) URL or a local file.  A download goes to a
temporary name, resumes a dropped transfer with an HTTP ``Range`` request, and
is renamed only when complete.  Its md5 is checked before anything reads it,
and only regular files under ``cifar-10-batches-py/`` are unpacked, into a
temporary folder renamed into place.  Nothing here prints: progress goes
through an ``on_progress(received_bytes, total_bytes)`` callback.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import shutil
import socket
import ssl
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath, PureWindowsPath

from cifar_baselines import __version__
from cifar_baselines.atomic import atomic_path
from cifar_baselines.errors import PipelineError

# The archive's folder and the batch files it must hold.
ARCHIVE_FOLDER = "cifar-10-batches-py"
BATCH_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")
CHUNK_BYTES = 1 << 20

ProgressCallback = Callable[[int, int | None], None]


class FetchError(PipelineError):
    """The archive could not be obtained, verified or unpacked."""


class HostUnreachableError(FetchError):
    """The server could not be reached at all (no network, DNS, refused)."""


class ChecksumError(FetchError):
    """The archive's md5 differs from the expected one."""


class UnsafeArchiveError(FetchError):
    """An archive member that would be written outside its folder, or is a
    link or a device."""


@dataclass(frozen=True)
class FetchResult:
    """What :func:`fetch_cifar` did.

    Attributes
    ----------
    source : str
        The URL downloaded, or the local path read.
    downloaded : bool
        True when the archive came over the network.
    n_bytes : int
        Size of the archive.
    md5 : str
        Its checksum (equal to the expected one).
    files : tuple of str
        Files written in the output folder, relative to it.
    """

    source: str
    downloaded: bool
    n_bytes: int
    md5: str
    files: tuple[str, ...]


def local_path(url: str, *, root: str | os.PathLike) -> Path | None:
    """Return the local file ``url`` names, or None for an http(s) URL.

    ``url`` may be ``http://``/``https://`` (None is returned), ``file://``
    with an absolute path, or a plain path; a relative path is taken relative
    to ``root``.
    """
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        return None

    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise FetchError(
                f"{url}: a file:// URL must name a local path, got host "
                f"{parts.netloc!r}"
            )
        path = Path(urllib.request.url2pathname(parts.path))
    elif scheme == "":
        path = Path(url).expanduser()
    else:
        raise FetchError(
            f"{url}: unsupported URL scheme {scheme!r}; expected http(s)://, "
            "file:// or a local path"
        )
    return path if path.is_absolute() else Path(root) / path


def file_md5(path: str | os.PathLike) -> str:
    """Return the md5 of a file as 32 lowercase hexadecimal digits."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def verify_md5(
    path: str | os.PathLike, expected: str, *, name: str | None = None
) -> str:
    """Check the md5 of ``path``; return it, or raise :class:`ChecksumError`.

    ``name`` is what the error message calls the file (default: ``path``).
    """
    actual = file_md5(path)
    if actual != expected.lower():
        raise ChecksumError(
            f"md5 mismatch for {name or path}: expected {expected.lower()}, "
            f"got {actual}"
        )
    return actual


# --- download -----------------------------------------------------------------


class _ReadTimeout:
    """Give a connection's socket the read timeout once it is connected.

    ``urllib`` has one ``timeout`` for connecting and reading alike; this
    mixin lets the connection phase use a short one and the transfer a longer
    one.
    """

    def __init__(self, *args, read_timeout: float, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._read_timeout = read_timeout

    def connect(self) -> None:
        super().connect()
        self.sock.settimeout(self._read_timeout)


class _HTTPConnection(_ReadTimeout, http.client.HTTPConnection):
    pass


class _HTTPSConnection(_ReadTimeout, http.client.HTTPSConnection):
    pass


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, read_timeout: float) -> None:
        super().__init__()
        self._connection = partial(_HTTPConnection, read_timeout=read_timeout)

    def http_open(self, req):
        return self.do_open(self._connection, req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, read_timeout: float) -> None:
        self._tls = ssl.create_default_context()
        super().__init__(context=self._tls)
        self._connection = partial(_HTTPSConnection, read_timeout=read_timeout)

    def https_open(self, req):
        return self.do_open(self._connection, req, context=self._tls)


class _Retryable(Exception):
    """A transfer that failed in a way worth another attempt."""


def _describe(exc: BaseException) -> str:
    if isinstance(exc, socket.gaierror):
        return f"name lookup failed ({exc.strerror or exc})"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


def _content_range_start(value: str | None) -> int | None:
    """The first byte of ``Content-Range: bytes START-END/TOTAL``, if given."""
    if not value or not value.startswith("bytes "):
        return None
    start, _, _ = value[len("bytes ") :].partition("-")
    return int(start) if start.strip().isdigit() else None


class _Transfer:
    """One download into an open file, resumable across requests."""

    def __init__(
        self,
        url: str,
        out,
        *,
        connect_timeout: float,
        read_timeout: float,
        on_progress: ProgressCallback | None,
    ) -> None:
        self.url = url
        self.host = urllib.parse.urlsplit(url).hostname or url
        self.out = out
        self.connect_timeout = connect_timeout
        self.opener = urllib.request.build_opener(
            _HTTPHandler(read_timeout), _HTTPSHandler(read_timeout)
        )
        self.on_progress = on_progress
        self.received = 0
        self.total: int | None = None
        self.reached = False

    def _report(self) -> None:
        if self.on_progress is not None:
            self.on_progress(self.received, self.total)

    def _restart(self) -> None:
        self.out.seek(0)
        self.out.truncate()
        self.received = 0
        self._report()

    def _open(self):
        headers = {"User-Agent": f"cifar-baselines/{__version__}"}
        if self.received:
            headers["Range"] = f"bytes={self.received}-"
        request = urllib.request.Request(self.url, headers=headers)

        try:
            return self.opener.open(request, timeout=self.connect_timeout)
        except urllib.error.HTTPError as exc:
            exc.close()
            self.reached = True
            if exc.code == 416 and self.received:
                # The server will not resume from here: start over.
                self._restart()
                raise _Retryable("server refused to resume (HTTP 416)") from None
            if exc.code in (408, 429, 500, 502, 503, 504):
                raise _Retryable(f"HTTP {exc.code} {exc.reason}") from None
            raise FetchError(f"{self.url}: HTTP {exc.code} {exc.reason}") from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, ssl.SSLError):
                raise FetchError(f"{self.url}: TLS error: {reason}") from None
            if not self.reached:
                # Never connected: no network, no such host, nothing listening.
                # Retrying would only make the user wait.
                raise HostUnreachableError(
                    f"cannot reach {self.host}: {_describe(reason)}"
                ) from None
            raise _Retryable(_describe(reason)) from None

    def attempt(self) -> None:
        """Request the bytes not yet received and append them to the file."""
        try:
            response = self._open()
        except (OSError, http.client.HTTPException) as exc:
            # Connected, then no response: dropped or timed out.
            self.reached = True
            raise _Retryable(_describe(exc)) from None
        self.reached = True

        with response:
            if self.received and response.status == 200:
                # The server ignored ``Range`` and sends the whole file.
                self._restart()
            elif response.status == 206:
                start = _content_range_start(response.headers.get("Content-Range"))
                if start != self.received:
                    self._restart()
                    raise _Retryable(f"server resumed at byte {start}")
            length = response.headers.get("Content-Length")
            if length is not None and length.isdigit():
                self.total = self.received + int(length)
            self._report()

            try:
                while chunk := response.read(CHUNK_BYTES):
                    self.out.write(chunk)
                    self.received += len(chunk)
                    self._report()
            except (OSError, http.client.HTTPException) as exc:
                raise _Retryable(_describe(exc)) from None

        if self.total is not None and self.received < self.total:
            raise _Retryable(
                f"connection closed after {self.received} of {self.total} bytes"
            )


def download(
    url: str,
    dest: str | os.PathLike,
    *,
    connect_timeout: float = 15.0,
    read_timeout: float = 60.0,
    retries: int = 4,
    backoff: float = 1.0,
    on_progress: ProgressCallback | None = None,
) -> int:
    """Download ``url`` to ``dest``, resuming dropped transfers.

    Parameters
    ----------
    url : str
        An http:// or https:// URL.
    dest : str or path-like
        Where the file goes; it appears only when the transfer is complete.
    connect_timeout, read_timeout : float
        Seconds to wait for a connection, and for each read once connected.
    retries : int
        Further attempts after a dropped connection, a read timeout or a
        transient HTTP status (5xx, 408, 429).  Each continues where the last
        stopped, with a ``Range`` request (from the start if the server
        ignores it).  A host that cannot be reached at all, or any other HTTP
        error, fails at once.
    backoff : float
        Seconds before the first retry, doubled for each further one.
    on_progress : callable, optional
        ``on_progress(received_bytes, total_bytes_or_None)`` after each chunk.

    Returns
    -------
    n_bytes : int
        Size of the downloaded file.
    """
    dest = Path(dest)
    failures = 0

    with atomic_path(dest) as part, part.open("wb") as out:
        transfer = _Transfer(
            url,
            out,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            on_progress=on_progress,
        )
        while True:
            try:
                transfer.attempt()
                break
            except _Retryable as exc:
                failures += 1
                if failures > retries:
                    raise FetchError(
                        f"{url}: download failed after {failures} attempts: {exc}"
                    ) from None
                time.sleep(backoff * 2 ** (failures - 1))

    return transfer.received


# --- unpack -------------------------------------------------------------------


def _member_target(member: tarfile.TarInfo, archive: Path) -> PurePosixPath | None:
    """Where a member goes inside the output folder; None to skip it.

    Raises :class:`UnsafeArchiveError` for a member that could write outside
    the output folder or is not a plain file or folder, wherever it is.
    """
    name = member.name
    path = PurePosixPath(name)

    def refuse(why: str) -> UnsafeArchiveError:
        return UnsafeArchiveError(f"{archive}: refused member {name!r}: {why}")

    if path.is_absolute() or PureWindowsPath(name).is_absolute():
        raise refuse("absolute path")
    if ".." in path.parts:
        raise refuse("path leads outside the archive folder ('..')")
    if member.issym() or member.islnk():
        raise refuse(f"link to {member.linkname!r}")
    if member.isdev():
        raise refuse("device or FIFO")
    if not (member.isfile() or member.isdir()):
        raise refuse("not a regular file or folder")

    parts = [part for part in path.parts if part != "."]
    if member.isdir() or len(parts) < 2 or parts[0] != ARCHIVE_FOLDER:
        return None
    return PurePosixPath(*parts[1:])


def unpack_batches(archive: str | os.PathLike, dest: str | os.PathLike) -> list[str]:
    """Unpack the regular files under ``cifar-10-batches-py/`` into ``dest``.

    ``dest`` is the batches folder itself (member
    ``cifar-10-batches-py/data_batch_1`` becomes ``dest/data_batch_1``).  It is
    filled under a temporary name and renamed into place, replacing an older
    one, only when every member was unpacked and the six batch files are
    there.  A member with an absolute path or ``..``, a link or a device
    refuses the whole archive; files outside the folder are skipped.

    Returns
    -------
    files : list of str
        The files written, relative to ``dest``, sorted.
    """
    archive = Path(archive)
    written: set[PurePosixPath] = set()

    try:
        with (
            tarfile.open(archive, "r:*") as tar,
            atomic_path(dest, directory=True) as tmp,
        ):
            for member in tar:
                target = _member_target(member, archive)
                if target is None:
                    continue
                if target in written:
                    raise UnsafeArchiveError(
                        f"{archive}: refused member {member.name!r}: appears twice"
                    )
                out = tmp.joinpath(*target.parts)
                out.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as src, out.open("xb") as f:
                    shutil.copyfileobj(src, f, CHUNK_BYTES)
                written.add(target)

            missing = [n for n in BATCH_FILES if PurePosixPath(n) not in written]
            if missing:
                raise FetchError(
                    f"{archive}: no {ARCHIVE_FOLDER}/{missing[0]} in the archive"
                )
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise FetchError(f"{archive}: not a readable tar archive ({exc})") from None

    return sorted(str(path) for path in written)


# --- the whole fetch ------------------------------------------------------------


def fetch_cifar(
    *,
    url: str,
    md5: str,
    dest: str | os.PathLike,
    root: str | os.PathLike = ".",
    on_progress: ProgressCallback | None = None,
    **download_options: float,
) -> FetchResult:
    """Obtain the archive at ``url``, check its md5 and unpack it into ``dest``.

    A local file (plain path or ``file://``) is read where it is and never
    modified.  A download goes to a temporary folder beside ``dest`` and is
    removed once unpacked, or at once when its md5 is wrong.

    Known limit: as the download is not kept, a re-run of the stage (after an
    edit of its code, say) downloads the archive again.  Keeping it needs a
    place outside the stage's outputs that git ignores; until then DVC's
    cache is what spares re-downloads.

    Parameters
    ----------
    url : str
        http(s) URL, ``file://`` URL, or a path (relative ones to ``root``).
    md5 : str
        Expected md5 of the archive.
    dest : str or path-like
        The ``cifar-10-batches-py`` output folder.
    root : str or path-like
        Folder relative paths in ``url`` start from.
    on_progress : callable, optional
        Download progress, see :func:`download`.
    **download_options
        ``connect_timeout``, ``read_timeout``, ``retries``, ``backoff`` of
        :func:`download`.
    """
    dest = Path(dest)
    source = local_path(url, root=root)

    if source is not None:
        if not source.is_file():
            raise FetchError(f"{url}: no such file ({source})")
        actual = verify_md5(source, md5)
        files = unpack_batches(source, dest)
        return FetchResult(
            source=str(source),
            downloaded=False,
            n_bytes=source.stat().st_size,
            md5=actual,
            files=tuple(files),
        )

    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".tmp-download-", dir=dest.parent) as tmp:
        archive = Path(tmp) / "archive.tar.gz"
        n_bytes = download(url, archive, on_progress=on_progress, **download_options)
        try:
            actual = verify_md5(archive, md5, name=url)
        except ChecksumError as exc:
            archive.unlink()
            raise ChecksumError(f"{exc} (the download was removed)") from None
        files = unpack_batches(archive, dest)

    return FetchResult(
        source=url, downloaded=True, n_bytes=n_bytes, md5=actual, files=tuple(files)
    )
