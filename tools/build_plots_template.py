"""Build the offline page template for ``dvc plots show`` and ``dvc plots diff``.

``make install`` runs this (and so ``make repro`` and ``make test`` do).  It
fetches the npm packages pinned in ``cifar_baselines.plots_template`` with
``npm pack``, checks their sha512, and writes a page with Vega, Vega-Lite and
vega-embed inline to the path that ``plots.html_template`` in ``.dvc/config``
names.  See docs/plots.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cifar_baselines.plots_template import build_template
from cifar_baselines.stage import get_logger, run

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "build" / "plots" / "offline.html",
        help="page to write (default: %(default)s)",
    )
    parser.add_argument(
        "--tarballs",
        type=Path,
        default=ROOT / "build" / "plots" / "npm",
        help="folder for the npm tarballs, reused when their sha512 matches "
        "(default: %(default)s)",
    )
    args = parser.parse_args()
    log = get_logger("plots_template")

    bundles = build_template(args.out, tarball_dir=args.tarballs)

    for packed in bundles:
        package = packed.package
        log.info("%s (%s): sha512 as pinned", package.spec, package.licence)
    log.info("wrote %s (%d KiB)", args.out, args.out.stat().st_size // 1024)


if __name__ == "__main__":
    run("plots_template", main)
