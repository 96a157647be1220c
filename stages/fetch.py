"""Stage fetch: obtain the CIFAR-10 archive, check its md5, unpack the batches.

Reads ``data.url`` and ``data.md5``; writes ``data/raw/cifar-10-batches-py/``.
"""

from pathlib import Path

from cifar_baselines import fetch
from cifar_baselines.errors import PipelineError
from cifar_baselines.params import load_params
from cifar_baselines.stage import get_logger, progress, run

STAGE = "fetch"
KEYS = ["data.url", "data.md5"]
OUT = Path("data/raw") / fetch.ARCHIVE_FOLDER


def main() -> None:
    params = load_params(KEYS)["data"]
    log = get_logger(STAGE)
    log.info("source %s", params["url"])

    bar = progress(desc="download", unit="B", unit_scale=True, unit_divisor=1024)

    def on_progress(received: int, total: int | None) -> None:
        if total is not None and bar.total != total:
            bar.reset(total=total)
        bar.update(received - bar.n)

    try:
        with bar:
            result = fetch.fetch_cifar(
                url=params["url"],
                md5=params["md5"],
                dest=OUT,
                root=Path.cwd(),
                on_progress=on_progress,
            )
    except fetch.HostUnreachableError as exc:
        raise PipelineError(
            f"{exc}; without network, set data.url and data.md5 to a local copy "
            'of the archive (README.md, "Offline use")'
        ) from None
    except fetch.ChecksumError as exc:
        raise PipelineError(
            f"{exc}; data.md5 must be the checksum of the archive at data.url"
        ) from None

    how = "downloaded" if result.downloaded else "read"
    log.info("%s %.1f MiB, md5 %s ok", how, result.n_bytes / 2**20, result.md5)
    log.info("unpacked %d files into %s", len(result.files), OUT)


if __name__ == "__main__":
    run(STAGE, main)
