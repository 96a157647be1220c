"""Build the HTML page template that lets ``dvc plots show`` render offline.

DVC draws its data-series plots with Vega-Lite in the browser.  Its default page
loads Vega, Vega-Lite and vega-embed from a CDN, so without a network the
charts stay blank.  ``plots.html_template`` in ``.dvc/config`` points DVC at
the page built here instead, which carries the three libraries inline.

The libraries come from the npm registry as the packages pinned in
:data:`BUNDLES`: ``npm pack`` fetches each package's tarball (no install, no
dependency tree; the browser bundles are self-contained), the tarball's sha512
is checked against the pin, and the bundle is read out of it.  The build is
deterministic: the same pins give the same page, byte for byte.

DVC fills the page by plain text replacement of three placeholders, each
written in braces: ``plot_divs`` (required: the charts and images),
``refresh_tag`` (a meta refresh, when DVC asks for one) and ``scripts`` (the
renderers' ``<script src=...>`` tags).  This page holds the first two and
deliberately not the third, so that no CDN tag reaches it.

Known limit: the ``scripts`` placeholder is also how a renderer other than
Vega would bring its library (DVC's plotly renderer, unused by ``dvc plots``
in DVC 3); such a renderer would draw nothing on this page.  The limit can go
if a plot of this project ever needs another renderer: inline that library too.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cifar_baselines.atomic import atomic_path
from cifar_baselines.errors import PipelineError

# The placeholders DVC (dvc_render.html) replaces in the template, with braces.
PLOT_DIVS = "{plot_divs}"
REFRESH_TAG = "{refresh_tag}"
SCRIPTS = "{scripts}"

# Text that must not occur in a script inlined into the page: the first three
# would end or confuse the <script> element, the others would be replaced.
_FORBIDDEN_IN_SCRIPTS = ("</script", "<script", "<!--", PLOT_DIVS, REFRESH_TAG, SCRIPTS)


class PlotsTemplateError(PipelineError):
    """The offline plots page cannot be built: npm, a tarball or a bundle."""


@dataclass(frozen=True)
class NpmBundle:
    """One npm package whose browser bundle goes into the page.

    Attributes
    ----------
    name, version : str
        The npm package and its exact version.
    bundle : str
        Path of the self-contained browser bundle inside the package.
    integrity : str
        ``sha512-<base64>`` of the package tarball, as the registry lists it
        (``npm view NAME@VERSION dist.integrity``).
    licence : str
        The SPDX licence the package declares in its ``package.json``.
    """

    name: str
    version: str
    bundle: str
    integrity: str
    licence: str

    @property
    def spec(self) -> str:
        """The package as npm names it on the command line: ``name@version``."""
        return f"{self.name}@{self.version}"

    @property
    def tarball(self) -> str:
        """File name ``npm pack`` gives the tarball of an unscoped package."""
        return f"{self.name}-{self.version}.tgz"


# Vega 5, Vega-Lite 5 and vega-embed 6: the major versions whose schema DVC's
# built-in plot templates are written for (they declare Vega-Lite v5).  Order
# matters: vega-lite needs vega loaded first, vega-embed needs both.
BUNDLES = (
    NpmBundle(
        name="vega",
        version="5.33.1",
        bundle="build/vega.min.js",
        integrity=(
            "sha512-1fArfVDUqVbb5z8n+/nVQb+VNBzx8svY6CrsyTK4"
            "Ujm4yrd9I1auoKxBAPXLCavY1LcrbHUskQbGUP8gXOzyQw=="
        ),
        licence="BSD-3-Clause",
    ),
    NpmBundle(
        name="vega-lite",
        version="5.23.0",
        bundle="build/vega-lite.min.js",
        integrity=(
            "sha512-l4J6+AWE3DIjvovEoHl2LdtCUkfm4zs8Xxx7INwZ"
            "EAv+XVb6kR6vIN1gt3t2gN2gs/y4DYTs/RPoTeYAuEg6mA=="
        ),
        licence="BSD-3-Clause",
    ),
    NpmBundle(
        name="vega-embed",
        version="6.29.0",
        bundle="build/vega-embed.min.js",
        integrity=(
            "sha512-PmlshTLtLFLgWtF/b23T1OwX53AugJ9RZ3qPE2c0"
            "1VFAbgt3/GSNI/etzA/GzdrkceXFma+FDHNXUppKuM0U6Q=="
        ),
        licence="BSD-3-Clause",
    ),
)


@dataclass(frozen=True)
class PackedBundle:
    """What the page takes from one verified tarball."""

    package: NpmBundle
    script: str
    licence_text: str | None  # the package's LICENSE file; None if it ships none


def tarball_integrity(path: str | os.PathLike) -> str:
    """Return the ``sha512-<base64>`` digest of a file, in npm's notation."""
    digest = hashlib.sha512()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return "sha512-" + base64.b64encode(digest.digest()).decode("ascii")


def verify_tarball(path: str | os.PathLike, package: NpmBundle) -> None:
    """Raise :class:`PlotsTemplateError` unless ``path`` has the pinned sha512."""
    found = tarball_integrity(path)
    if found != package.integrity:
        raise PlotsTemplateError(
            f"{path}: the tarball of {package.spec} does not match its pin in "
            f"cifar_baselines/plots_template.py: expected {package.integrity}, "
            f"found {found}"
        )


def fetch_tarballs(
    packages: Sequence[NpmBundle], dest: str | os.PathLike, *, npm: str = "npm"
) -> list[Path]:
    """Return the verified tarballs of ``packages`` in ``dest``, fetching as needed.

    A tarball already in ``dest`` with the pinned sha512 is reused, so a
    rebuild needs no network; the others are fetched in one ``npm pack`` call.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    paths = [dest / package.tarball for package in packages]

    missing = []
    for package, path in zip(packages, paths, strict=True):
        if not (path.is_file() and tarball_integrity(path) == package.integrity):
            missing.append(package)

    if missing:
        _npm_pack([package.spec for package in missing], dest, npm=npm)

    for package, path in zip(packages, paths, strict=True):
        if not path.is_file():
            raise PlotsTemplateError(f"npm pack {package.spec} did not write {path}")
        verify_tarball(path, package)
    return paths


def _npm_pack(specs: list[str], dest: Path, *, npm: str) -> None:
    executable = shutil.which(npm)
    if executable is None:
        raise PlotsTemplateError(
            f"{npm!r} not found on PATH: the offline plots page takes Vega, "
            "Vega-Lite and vega-embed from the npm registry (Debian: "
            "apt-get install npm)"
        )

    command = [executable, "pack", *specs, "--pack-destination", str(dest), "--json"]
    env = {**os.environ, "npm_config_update_notifier": "false"}
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        tail = " ".join(result.stderr.strip().splitlines()[-3:])
        raise PlotsTemplateError(
            f"npm pack {' '.join(specs)} failed (exit {result.returncode}): {tail}"
        )


def read_bundle(tarball: str | os.PathLike, package: NpmBundle) -> PackedBundle:
    """Read the browser bundle and licence of ``package`` from its tarball.

    The tarball must already be verified; this checks that it holds the bundle
    and declares the pinned licence, and that the bundle can be inlined.
    """
    with tarfile.open(tarball, "r:gz") as archive:
        manifest = json.loads(_member_text(archive, "package.json", tarball))
        script = _member_text(archive, package.bundle, tarball)
        licence_text = None
        for member in archive.getnames():
            if member.lower() in ("package/license", "package/license.md"):
                licence_text = _member_text(archive, member[len("package/") :], tarball)

    declared = manifest.get("license")
    if declared != package.licence:
        raise PlotsTemplateError(
            f"{tarball}: {package.spec} declares licence {declared!r}, expected "
            f"{package.licence!r}; review the new licence before changing the pin"
        )
    check_inlinable(script, source=f"{package.spec} {package.bundle}")
    return PackedBundle(package=package, script=script, licence_text=licence_text)


def _member_text(archive: tarfile.TarFile, name: str, tarball: object) -> str:
    try:
        member = archive.extractfile(f"package/{name}")
    except KeyError:
        member = None
    if member is None:
        raise PlotsTemplateError(f"{tarball}: no file package/{name} in the tarball")
    return member.read().decode("utf-8")


def check_inlinable(script: str, *, source: str) -> None:
    """Raise :class:`PlotsTemplateError` if ``script`` cannot sit in the page as is.

    A script inside ``<script>...</script>`` must not contain a closing or
    opening script tag or a comment opener, and must not contain DVC's
    placeholders, which DVC would replace wherever they occur.
    """
    lowered = script.lower()
    for text in _FORBIDDEN_IN_SCRIPTS:
        if text in lowered:
            raise PlotsTemplateError(
                f"{source}: contains {text!r}, which cannot be inlined into the "
                "plots page unescaped"
            )


def render_page(bundles: Sequence[PackedBundle]) -> str:
    """Return the page template with the ``bundles`` inlined, in their order.

    The page holds ``{plot_divs}`` and ``{refresh_tag}`` once each and no
    ``{scripts}``.  A small script shows any script error, rejected promise or
    failed image load in a box above the plots (``#plot-errors``), so that a
    chart that fails to draw says why instead of leaving a blank space.
    """
    for packed in bundles:
        check_inlinable(packed.script, source=packed.package.spec)

    provenance = "\n".join(
        f"  {p.package.spec} ({p.package.licence}): {p.package.bundle}, "
        f"npm tarball {p.package.integrity}"
        for p in bundles
    )
    scripts = "\n".join(
        f"<script>/* {p.package.spec} {p.package.bundle} ({p.package.licence}) */\n"
        f"{p.script}\n</script>"
        for p in bundles
    )
    summary = ", ".join(f"{p.package.spec}" for p in bundles)
    licences = "\n".join(_licence_html(p) for p in bundles)

    page = _PAGE
    for marker, value in (
        ("@@PROVENANCE@@", provenance),
        ("@@SCRIPTS@@", scripts),
        ("@@SUMMARY@@", html.escape(summary)),
        ("@@LICENCES@@", licences),
    ):
        page = page.replace(marker, value)

    for placeholder, count in ((PLOT_DIVS, 1), (REFRESH_TAG, 1), (SCRIPTS, 0)):
        if page.count(placeholder) != count:
            raise PlotsTemplateError(
                f"the plots page holds {placeholder} {page.count(placeholder)} "
                f"times, expected {count}"
            )
    return page


def _licence_html(packed: PackedBundle) -> str:
    package = packed.package
    if packed.licence_text is None:
        text = (
            f"{package.licence}, as declared in the package.json of "
            f"{package.spec}; its npm package ships no LICENSE file."
        )
    else:
        text = packed.licence_text.strip()
    return f"<h3>{html.escape(package.spec)}</h3>\n<pre>{html.escape(text)}</pre>"


def build_template(
    dest: str | os.PathLike,
    *,
    tarball_dir: str | os.PathLike,
    packages: Sequence[NpmBundle] = BUNDLES,
    npm: str = "npm",
) -> list[PackedBundle]:
    """Fetch, verify and inline ``packages``; write the page to ``dest`` atomically.

    Returns what was inlined, for the caller to log.
    """
    tarballs = fetch_tarballs(packages, tarball_dir, npm=npm)

    bundles = [
        read_bundle(tarball, package)
        for package, tarball in zip(packages, tarballs, strict=True)
    ]
    page = render_page(bundles)

    with atomic_path(dest) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return bundles


# The page.  @@NAME@@ markers are filled by render_page; DVC's placeholders
# (in braces) are left for DVC.
_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
{refresh_tag}
<title>cifar-baselines: DVC plots</title>
<!--
  Page template for `dvc plots show` and `dvc plots diff`, set by
  plots.html_template in .dvc/config.  Generated by
  tools/build_plots_template.py from the npm packages pinned in
  src/cifar_baselines/plots_template.py; do not edit, rebuild it.

  It carries these scripts inline, so that the plots render with no network:
@@PROVENANCE@@
  Their licence texts are at the end of the page.
-->
<style>
  body { margin: 24px; font: 14px/1.4 system-ui, sans-serif; color: #222; }
  h1 { font-size: 18px; font-weight: 600; margin: 0 0 16px; }
  #plots { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
  #plots img { max-width: 100%; }
  #plot-errors {
    color: #900; background: #fee; border: 1px solid #c66;
    padding: 8px 12px; white-space: pre-wrap;
  }
  footer { margin-top: 40px; color: #555; font-size: 12px; }
  footer pre { white-space: pre-wrap; max-width: 80ch; }
</style>
<script>
  // Show what keeps a plot from drawing: script errors, rejected promises
  // (vegaEmbed returns one) and images that fail to load.
  (function () {
    "use strict";
    var messages = [];

    function show() {
      var box = document.getElementById("plot-errors");
      if (!box) {
        return;  // the body is not parsed yet; DOMContentLoaded shows it
      }
      box.textContent = "Some plots could not be drawn:\\n" + messages.join("\\n");
      box.hidden = false;
    }

    function record(message) {
      messages.push(String(message));
      show();
    }

    window.addEventListener("error", function (event) {
      var target = event.target;
      if (target && target !== window && (target.src || target.href)) {
        record("could not load " + (target.src || target.href));
      } else {
        record(event.message || "unknown script error");
      }
    }, true);
    window.addEventListener("unhandledrejection", function (event) {
      var reason = event.reason;
      record(reason && reason.message ? reason.message : reason);
    });
    document.addEventListener("DOMContentLoaded", function () {
      if (messages.length) {
        show();
      }
    });
  })();
</script>
@@SCRIPTS@@
</head>
<body>
<h1>cifar-baselines: DVC plots</h1>
<pre id="plot-errors" hidden></pre>
<main id="plots">
{plot_divs}
</main>
<footer>
<details>
<summary>JavaScript in this page: @@SUMMARY@@</summary>
@@LICENCES@@
</details>
</footer>
</body>
</html>
"""
