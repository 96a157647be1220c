"""Fetching the archive: local sources, downloads from a loopback HTTP server
(resumed, restarted, failed), md5 checks and safe unpacking.

Every server here listens on 127.0.0.1; no test contacts another address.
"""

from __future__ import annotations

import io
import shutil
import socket
import ssl
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import TinyCifar

from cifar_baselines.fetch import (
    BATCH_FILES,
    ChecksumError,
    FetchError,
    HostUnreachableError,
    UnsafeArchiveError,
    download,
    fetch_cifar,
    file_md5,
    local_path,
    unpack_batches,
)

EXPECTED_FILES = sorted([*BATCH_FILES, "batches.meta"])
FAST = {"connect_timeout": 2.0, "read_timeout": 2.0, "backoff": 0.0}


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # A proxy from the environment would route loopback requests elsewhere.
    for name in ("http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


def _tree(root: Path) -> set[Path]:
    return {path for path in root.rglob("*")}


# --- local sources ----------------------------------------------------------------


def test_local_path_forms(tmp_path: Path) -> None:
    assert local_path("https://example.org/a.tar.gz", root=tmp_path) is None
    assert local_path("http://127.0.0.1:8000/a.tar.gz", root=tmp_path) is None
    assert local_path("data/a.tar.gz", root=tmp_path) == tmp_path / "data/a.tar.gz"
    assert local_path("/abs/a.tar.gz", root=tmp_path) == Path("/abs/a.tar.gz")
    assert local_path("file:///abs/a%20b.tar.gz", root=tmp_path) == Path(
        "/abs/a b.tar.gz"
    )
    assert local_path("file://localhost/abs/a.tar.gz", root=tmp_path) == Path(
        "/abs/a.tar.gz"
    )

    with pytest.raises(FetchError, match=r"file:// URL must name a local path"):
        local_path("file://server/share/a.tar.gz", root=tmp_path)
    with pytest.raises(FetchError, match=r"unsupported URL scheme 'ftp'"):
        local_path("ftp://example.org/a.tar.gz", root=tmp_path)


@pytest.mark.parametrize("form", ["relative", "absolute", "file-url"])
def test_fetch_from_a_local_file(tmp_path: Path, tiny_cifar: TinyCifar, form) -> None:
    archive = tiny_cifar.archive
    url = {
        "relative": str(archive.relative_to(archive.parents[1])),
        "absolute": str(archive),
        "file-url": archive.as_uri(),
    }[form]
    dest = tmp_path / "raw" / "cifar-10-batches-py"
    before = archive.stat()

    result = fetch_cifar(
        url=url, md5=tiny_cifar.md5, dest=dest, root=archive.parents[1]
    )

    assert not result.downloaded
    assert result.md5 == tiny_cifar.md5
    assert list(result.files) == EXPECTED_FILES
    assert sorted(p.name for p in dest.iterdir()) == EXPECTED_FILES
    for name in EXPECTED_FILES:
        assert (dest / name).read_bytes() == (tiny_cifar.folder / name).read_bytes()
    assert archive.stat().st_mtime_ns == before.st_mtime_ns


def test_local_md5_mismatch_keeps_the_file(tmp_path: Path, tiny_cifar) -> None:
    dest = tmp_path / "raw" / "cifar-10-batches-py"
    wrong = "0" * 32

    with pytest.raises(
        ChecksumError,
        match=rf"md5 mismatch for .*: expected {wrong}, got {tiny_cifar.md5}$",
    ):
        fetch_cifar(url=str(tiny_cifar.archive), md5=wrong, dest=dest)
    assert tiny_cifar.archive.is_file()
    assert not dest.exists()


def test_missing_local_file(tmp_path: Path) -> None:
    with pytest.raises(FetchError, match=r"nothing\.tar\.gz: no such file"):
        fetch_cifar(url="nothing.tar.gz", md5="0" * 32, dest=tmp_path / "out")


# --- downloads from a loopback server ---------------------------------------------


@dataclass
class Server:
    """What the loopback server serves and what it was asked."""

    payload: bytes
    url: str = ""
    ranges: list[str | None] = field(default_factory=list)
    drop_after: list[int] = field(default_factory=list)  # one per request
    statuses: list[int] = field(default_factory=list)  # error statuses first
    ignore_range: bool = False
    stall: bool = False
    release: threading.Event = field(default_factory=threading.Event)


class _Handler(BaseHTTPRequestHandler):
    server: ThreadingHTTPServer

    def do_GET(self) -> None:
        state: Server = self.server.state
        state.ranges.append(self.headers.get("Range"))
        if self.path != "/cifar-10-python.tar.gz":
            self.send_error(404)
            return
        if state.statuses:
            self.send_error(state.statuses.pop(0))
            return

        start = 0
        requested = self.headers.get("Range")
        if requested and not state.ignore_range:
            start = int(requested.removeprefix("bytes=").rstrip("-"))
            self.send_response(206)
            total = len(state.payload)
            self.send_header("Content-Range", f"bytes {start}-{total - 1}/{total}")
        else:
            self.send_response(200)
        body = state.payload[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()

        if state.stall:
            state.release.wait(10)
            return
        if state.drop_after:
            body = body[: state.drop_after.pop(0)]
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@contextmanager
def _serving(payload: bytes, cert: Path | None = None) -> Iterator[Server]:
    """Serve ``payload`` on 127.0.0.1, over TLS with ``cert`` if given."""
    state = Server(payload=payload)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.state = state
    scheme = "http"
    if cert is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert)
        httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
        scheme = "https"
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    state.url = f"{scheme}://127.0.0.1:{httpd.server_port}/cifar-10-python.tar.gz"
    try:
        yield state
    finally:
        state.release.set()
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def server(tiny_cifar: TinyCifar) -> Iterator[Server]:
    with _serving(tiny_cifar.archive.read_bytes()) as state:
        yield state


@pytest.fixture
def self_signed(tmp_path: Path) -> Path:
    """A certificate and key for 127.0.0.1, in one PEM file."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    folder = tmp_path / "tls"
    folder.mkdir()
    pem, cert = folder / "loopback.pem", folder / "cert.pem"
    command = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes"]
    command += ["-days", "1", "-subj", "/CN=127.0.0.1"]
    command += ["-addext", "subjectAltName=IP:127.0.0.1"]
    command += ["-keyout", str(pem), "-out", str(cert)]
    subprocess.run(command, check=True, capture_output=True)
    pem.write_text(pem.read_text() + cert.read_text())
    return pem


def test_download_and_unpack(tmp_path: Path, server: Server, tiny_cifar) -> None:
    dest = tmp_path / "raw" / "cifar-10-batches-py"
    seen: list[tuple[int, int | None]] = []

    result = fetch_cifar(
        url=server.url,
        md5=tiny_cifar.md5,
        dest=dest,
        on_progress=lambda *args: seen.append(args),
        **FAST,
    )

    assert result.downloaded and result.n_bytes == len(server.payload)
    assert list(result.files) == EXPECTED_FILES
    assert server.ranges == [None]
    assert seen[-1] == (len(server.payload), len(server.payload))
    # Only the output folder is left: the download was removed.
    assert [p.name for p in dest.parent.iterdir()] == ["cifar-10-batches-py"]


def test_dropped_transfer_resumes_with_range(tmp_path: Path, server: Server) -> None:
    server.drop_after = [300_000]
    dest = tmp_path / "archive.tar.gz"

    n_bytes = download(server.url, dest, **FAST)

    assert server.ranges == [None, "bytes=300000-"]
    assert n_bytes == len(server.payload)
    assert dest.read_bytes() == server.payload


def test_server_ignoring_range_restarts(tmp_path: Path, server: Server) -> None:
    server.drop_after = [300_000]
    server.ignore_range = True
    dest = tmp_path / "archive.tar.gz"
    seen: list[int] = []

    download(server.url, dest, on_progress=lambda got, _: seen.append(got), **FAST)

    assert server.ranges == [None, "bytes=300000-"]
    assert 0 in seen[seen.index(300_000) :]  # the restart began again at 0
    assert dest.read_bytes() == server.payload


def test_transient_status_is_retried(tmp_path: Path, server: Server) -> None:
    server.statuses = [503]
    dest = tmp_path / "archive.tar.gz"

    download(server.url, dest, **FAST)

    assert len(server.ranges) == 2
    assert dest.read_bytes() == server.payload


def test_retries_are_bounded(tmp_path: Path, server: Server) -> None:
    server.drop_after = [1000] * 10

    with pytest.raises(
        FetchError,
        match=r"download failed after 3 attempts: connection closed after \d+ of",
    ):
        download(server.url, tmp_path / "archive.tar.gz", retries=2, **FAST)
    assert len(server.ranges) == 3
    assert list(tmp_path.iterdir()) == []


def test_read_timeout(tmp_path: Path, server: Server) -> None:
    # The long connect timeout must not apply once connected.
    server.stall = True
    options = {**FAST, "connect_timeout": 60.0, "read_timeout": 0.2}

    start = time.perf_counter()
    with pytest.raises(FetchError, match=r"failed after 2 attempts: timed out"):
        download(server.url, tmp_path / "archive.tar.gz", retries=1, **options)
    assert time.perf_counter() - start < 5
    assert list(tmp_path.iterdir()) == []


def test_https_download_resumes(
    tmp_path: Path, tiny_cifar: TinyCifar, self_signed: Path, monkeypatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(self_signed))  # trust it
    dest = tmp_path / "archive.tar.gz"

    with _serving(tiny_cifar.archive.read_bytes(), cert=self_signed) as tls:
        tls.drop_after = [300_000]
        download(tls.url, dest, **FAST)

    assert tls.ranges == [None, "bytes=300000-"]
    assert dest.read_bytes() == tls.payload


def test_untrusted_certificate_is_an_error(
    tmp_path: Path, tiny_cifar: TinyCifar, self_signed: Path
) -> None:
    with _serving(b"", cert=self_signed) as tls:
        with pytest.raises(FetchError, match=r"TLS error: .*CERTIFICATE_VERIFY_FAILED"):
            download(tls.url, tmp_path / "archive.tar.gz", **FAST)
        assert tls.ranges == []
    assert [p.name for p in tmp_path.iterdir()] == ["tls"]


def test_md5_mismatch_removes_the_download(tmp_path: Path, server, tiny_cifar) -> None:
    dest = tmp_path / "raw" / "cifar-10-batches-py"
    wrong = "f" * 32

    with pytest.raises(
        ChecksumError,
        match=(
            rf"^md5 mismatch for {server.url}: expected {wrong}, "
            rf"got {tiny_cifar.md5} \(the download was removed\)$"
        ),
    ):
        fetch_cifar(url=server.url, md5=wrong, dest=dest, **FAST)
    assert list(dest.parent.iterdir()) == []


def test_not_found(tmp_path: Path, server: Server) -> None:
    url = server.url.replace("cifar-10-python", "missing")

    with pytest.raises(FetchError, match=rf"^{url}: HTTP 404 Not Found$"):
        download(url, tmp_path / "archive.tar.gz", **FAST)
    assert len(server.ranges) == 1
    assert list(tmp_path.iterdir()) == []


def test_unreachable_host_fails_fast(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens on ``port`` now: the connection is refused.

    start = time.perf_counter()
    with pytest.raises(
        HostUnreachableError, match=r"^cannot reach 127\.0\.0\.1: connection refused$"
    ):
        fetch_cifar(
            url=f"http://127.0.0.1:{port}/cifar-10-python.tar.gz",
            md5="0" * 32,
            dest=tmp_path / "raw" / "cifar-10-batches-py",
            backoff=1.0,
        )
    assert time.perf_counter() - start < 1.0
    assert list((tmp_path / "raw").iterdir()) == []


# --- unpacking --------------------------------------------------------------------


def _add(tar: tarfile.TarFile, info: tarfile.TarInfo, content: bytes = b"") -> None:
    if info.isfile():
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    else:
        tar.addfile(info)


def _archive(path: Path, extra: list[tarfile.TarInfo]) -> Path:
    """An archive with the six batch files (dummy bytes), then ``extra``."""
    with tarfile.open(path, "w:gz") as tar:
        for name in BATCH_FILES:
            _add(tar, tarfile.TarInfo(f"cifar-10-batches-py/{name}"), b"batch")
        for info in extra:
            _add(tar, info, b"payload")
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = ""):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda root: _member("cifar-10-batches-py/../../escaped"), r"'\.\.'"),
        (lambda root: _member("../escaped"), r"'\.\.'"),
        (lambda root: _member(str(root / "escaped")), r"absolute path"),
        (
            lambda root: _member(
                "cifar-10-batches-py/batches.meta", tarfile.SYMTYPE, str(root / "x")
            ),
            r"link to",
        ),
        (
            lambda root: _member(
                "cifar-10-batches-py/batches.meta",
                tarfile.LNKTYPE,
                "cifar-10-batches-py/data_batch_1",
            ),
            r"link to",
        ),
        (lambda root: _member("cifar-10-batches-py/tty", tarfile.CHRTYPE), "device"),
        (lambda root: _member("cifar-10-batches-py/pipe", tarfile.FIFOTYPE), "FIFO"),
    ],
)
def test_unsafe_members_are_refused(tmp_path: Path, make, why: str) -> None:
    member = make(tmp_path)
    archive = _archive(tmp_path / "evil.tar.gz", [member])
    dest = tmp_path / "out" / "raw" / "cifar-10-batches-py"
    before = _tree(tmp_path)

    with pytest.raises(
        UnsafeArchiveError,
        match=rf"evil\.tar\.gz: refused member '{member.name}': .*{why}",
    ):
        unpack_batches(archive, dest)

    created = _tree(tmp_path) - before
    assert created <= {tmp_path / "out", tmp_path / "out" / "raw"}
    assert not dest.exists()


def test_other_members_are_skipped(tmp_path: Path) -> None:
    archive = _archive(
        tmp_path / "a.tar.gz",
        [
            _member("readme.html"),
            _member("other-folder/data_batch_1"),
            _member("./cifar-10-batches-py/extra"),
            _member("cifar-10-batches-py/sub", tarfile.DIRTYPE),
        ],
    )
    dest = tmp_path / "cifar-10-batches-py"

    files = unpack_batches(archive, dest)

    assert files == sorted([*BATCH_FILES, "extra"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "a.tar.gz",
        "cifar-10-batches-py",
    ]


def test_duplicate_member_is_refused(tmp_path: Path) -> None:
    archive = _archive(
        tmp_path / "a.tar.gz", [_member("cifar-10-batches-py/test_batch")]
    )

    with pytest.raises(UnsafeArchiveError, match=r"test_batch': appears twice"):
        unpack_batches(archive, tmp_path / "out")


def test_missing_batch_in_archive(tmp_path: Path) -> None:
    archive = tmp_path / "a.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        _add(tar, _member("cifar-10-batches-py/data_batch_1"), b"x")

    with pytest.raises(FetchError, match=r"no cifar-10-batches-py/data_batch_2 in"):
        unpack_batches(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_corrupt_archive(tmp_path: Path, tiny_cifar: TinyCifar) -> None:
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(tiny_cifar.archive.read_bytes()[:200_000])

    with pytest.raises(FetchError, match=r"a\.tar\.gz: not a readable tar archive"):
        unpack_batches(archive, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tar.gz"]


def test_unpack_replaces_an_older_folder(tmp_path: Path, tiny_cifar) -> None:
    dest = tmp_path / "cifar-10-batches-py"
    dest.mkdir()
    (dest / "stale").write_text("from an earlier run")

    unpack_batches(tiny_cifar.archive, dest)

    assert sorted(p.name for p in dest.iterdir()) == EXPECTED_FILES


def test_file_md5(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    # md5("abc") from RFC 1321's test suite.
    assert file_md5(path) == "900150983cd24fb0d6963f7d28e17f72"
