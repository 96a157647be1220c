"""The plots page: how it is built, and that it renders with no network.

The fast tests check ``cifar_baselines.plots_template`` on tiny hand-made
tarballs.  The browser tests build a scratch DVC project from this repository's
``dvc.yaml`` and ``.dvc/config`` with small synthetic results, run
``dvc plots show`` and ``dvc plots diff`` there, and open the page in headless
Chromium with every host name unresolvable and a dead proxy, then read the DOM
Chromium dumps: each Vega plot must hold a drawn ``marks`` canvas or SVG, each
image must be there, and the page's error box must stay empty.  The same check
on DVC's default page (which loads its scripts from a CDN) must find no chart,
which shows that the check can fail.

Set ``SAVE_PLOTS_SCREENSHOT=path.png`` to keep a screenshot of the page; the
screenshot then shows this repository's own results when all of them exist.
"""

from __future__ import annotations

import base64
import configparser
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tarfile
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import yaml

from cifar_baselines.plots_template import (
    BUNDLES,
    PLOT_DIVS,
    REFRESH_TAG,
    SCRIPTS,
    NpmBundle,
    PackedBundle,
    PlotsTemplateError,
    check_inlinable,
    fetch_tarballs,
    read_bundle,
    render_page,
    tarball_integrity,
    verify_tarball,
)
from cifar_baselines.read_cifar import CLASS_NAMES

ROOT = Path(__file__).resolve().parents[1]

# The files the stages write and dvc.yaml draws.
RESULT_FILES = (
    "results/knn/cv.csv",
    "results/knn/accuracy.csv",
    "results/knn/confusion.csv",
    "results/mlp/history.csv",
    "results/mlp/confusion.csv",
    "results/knn_cv.png",
    "results/knn.png",
    "results/mlp.png",
)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".svg")

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    # No network: no host name resolves and every connection goes to a closed
    # port on this machine, so a page that needs a CDN draws nothing.
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--proxy-server=127.0.0.1:9",
    "--virtual-time-budget=10000",
)

SCREENSHOT_SIZE = (1400, 1500)


# --- fast tests of the page builder ------------------------------------------


def make_tarball(path: Path, files: dict[str, str]) -> Path:
    """Write a gzipped tarball holding ``package/<name>`` for each of ``files``."""
    with tarfile.open(path, "w:gz") as archive:
        for name, text in files.items():
            data = text.encode("utf-8")
            info = tarfile.TarInfo(f"package/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def fake_package(tarball: Path, *, licence: str = "BSD-3-Clause") -> NpmBundle:
    return NpmBundle(
        name="fake",
        version="1.0.0",
        bundle="build/fake.min.js",
        integrity=tarball_integrity(tarball),
        licence=licence,
    )


def test_tarball_integrity_is_npm_sha512(tmp_path):
    # FIPS 180-2 test vector: SHA-512("abc").
    path = tmp_path / "abc"
    path.write_bytes(b"abc")
    expected = bytes.fromhex(
        "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
        "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"
    )

    found = tarball_integrity(path)

    assert found == "sha512-" + base64.b64encode(expected).decode()


def test_verify_tarball_names_both_digests(tmp_path):
    tarball = make_tarball(tmp_path / "fake-1.0.0.tgz", {"package.json": "{}"})
    package = fake_package(tarball)
    verify_tarball(tarball, package)

    tarball.write_bytes(tarball.read_bytes() + b"\0")

    with pytest.raises(PlotsTemplateError, match=r"fake@1\.0\.0 does not match") as e:
        verify_tarball(tarball, package)
    assert package.integrity in str(e.value)
    assert tarball_integrity(tarball) in str(e.value)


def test_fetch_reuses_a_verified_tarball_without_npm(tmp_path):
    tarball = make_tarball(tmp_path / "fake-1.0.0.tgz", {"package.json": "{}"})
    package = fake_package(tarball)

    paths = fetch_tarballs([package], tmp_path, npm="no-such-npm-here")

    assert paths == [tarball]


def test_fetch_without_npm_says_what_is_missing(tmp_path):
    tarball = make_tarball(tmp_path / "fake-1.0.0.tgz", {"package.json": "{}"})
    package = fake_package(tarball)
    tarball.unlink()

    with pytest.raises(PlotsTemplateError, match="'no-such-npm-here' not found"):
        fetch_tarballs([package], tmp_path, npm="no-such-npm-here")


def test_read_bundle_takes_script_and_licence(tmp_path):
    files = {
        "package.json": json.dumps({"license": "BSD-3-Clause"}),
        "build/fake.min.js": "window.fake = 1;",
        "LICENSE": "Copyright (c) the fake authors",
    }
    tarball = make_tarball(tmp_path / "fake-1.0.0.tgz", files)

    packed = read_bundle(tarball, fake_package(tarball))

    assert packed.script == "window.fake = 1;"
    assert packed.licence_text == "Copyright (c) the fake authors"


def test_read_bundle_refuses_a_changed_licence(tmp_path):
    files = {
        "package.json": json.dumps({"license": "GPL-3.0"}),
        "build/fake.min.js": "window.fake = 1;",
    }
    tarball = make_tarball(tmp_path / "fake-1.0.0.tgz", files)

    with pytest.raises(
        PlotsTemplateError,
        match=r"declares licence 'GPL-3\.0', expected 'BSD-3-Clause'",
    ):
        read_bundle(tarball, fake_package(tarball))


def test_read_bundle_names_a_missing_bundle(tmp_path):
    files = {"package.json": json.dumps({"license": "BSD-3-Clause"})}
    tarball = make_tarball(tmp_path / "fake-1.0.0.tgz", files)

    with pytest.raises(
        PlotsTemplateError, match=r"no file package/build/fake\.min\.js"
    ):
        read_bundle(tarball, fake_package(tarball))


@pytest.mark.parametrize(
    "text",
    ["</script>", "</SCRIPT", "<script>", "<!--", PLOT_DIVS, SCRIPTS, REFRESH_TAG],
)
def test_check_inlinable_refuses_text_that_breaks_the_page(text):
    with pytest.raises(PlotsTemplateError, match="cannot be inlined"):
        check_inlinable(f"var a = '{text}';", source="fake")


def test_render_page_inlines_scripts_in_order_and_keeps_dvc_placeholders():
    first = NpmBundle("first", "1.0.0", "a.js", "sha512-AAAA", "BSD-3-Clause")
    second = NpmBundle("second", "2.0.0", "b.js", "sha512-BBBB", "MIT")
    bundles = [
        PackedBundle(first, "window.first = 1;", "Copyright <first> & co"),
        PackedBundle(second, "window.second = 2;", None),
    ]

    page = render_page(bundles)

    assert page.count(PLOT_DIVS) == 1
    assert page.count(REFRESH_TAG) == 1
    assert SCRIPTS not in page
    assert page.index("window.first = 1;") < page.index("window.second = 2;")
    assert "first@1.0.0 (BSD-3-Clause): a.js, npm tarball sha512-AAAA" in page
    assert "Copyright &lt;first&gt; &amp; co" in page
    assert "MIT, as declared in the package.json of second@2.0.0" in page
    assert "<script src" not in page


def configured_template() -> Path:
    """The page ``plots.html_template`` in .dvc/config names (relative to .dvc)."""
    config = configparser.ConfigParser()
    config.read(ROOT / ".dvc" / "config")
    return (ROOT / ".dvc" / config["plots"]["html_template"]).resolve()


@pytest.fixture(scope="module")
def template() -> Path:
    path = configured_template()
    if not path.is_file():
        pytest.fail(
            f"{path} is missing: `make install` builds it "
            "(tools/build_plots_template.py)"
        )
    return path


def test_built_page_carries_the_pinned_packages(template):
    page = template.read_text(encoding="utf-8")

    for package in BUNDLES:
        assert f"{package.spec} ({package.licence}): {package.bundle}" in page
        assert f"npm tarball {package.integrity}" in page
        assert f"<script>/* {package.spec} {package.bundle}" in page
    assert page.count(PLOT_DIVS) == 1
    assert SCRIPTS not in page


# --- browser tests -----------------------------------------------------------


@pytest.fixture(scope="module")
def chromium() -> str:
    path = os.environ.get("CHROMIUM") or shutil.which("chromium")
    if path is None:
        pytest.skip(
            "no chromium on PATH: `make test` installs Debian's package when run "
            "as root with apt-get; or set CHROMIUM=/path/to/chromium"
        )
    return path


def run_chromium(chromium: str, tmp_path: Path, url: str, *args: str) -> str:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    command = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, url]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def run_dvc(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "dvc", *args],
        cwd=project,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, f"dvc {' '.join(args)}:\n{result.stderr}"
    return result


def run_git(project: Path, *args: str) -> None:
    identity = ["-c", "user.name=test", "-c", "user.email=test@example.invalid"]
    subprocess.run(["git", *identity, *args], cwd=project, check=True, timeout=60)


def write_synthetic_results(project: Path, *, seed: int) -> None:
    """Write small results files with the columns the stages write."""
    rng = np.random.default_rng(seed)
    (project / "results/knn").mkdir(parents=True, exist_ok=True)
    (project / "results/mlp").mkdir(parents=True, exist_ok=True)

    k = np.arange(1, 21)
    accuracy = 0.30 + 0.01 * k - 0.0006 * k**2 + rng.normal(0, 0.003, k.size)
    rows = [f"{a},{b:.4f}" for a, b in zip(k, accuracy, strict=True)]
    (project / "results/knn/accuracy.csv").write_text(
        "k,accuracy\n" + "\n".join(rows) + "\n"
    )
    folds = accuracy[:, None] + rng.normal(0, 0.004, (k.size, 5))
    mean, std = folds.mean(axis=1), folds.std(axis=1, ddof=1)
    rows = [
        ",".join(f"{v:.4f}" for v in (m, s, m - s, m + s, *f))
        for m, s, f in zip(mean, std, folds, strict=True)
    ]
    header = (
        "k,mean,std,mean_minus_std,mean_plus_std,fold_1,fold_2,fold_3,fold_4,fold_5"
    )
    (project / "results/knn/cv.csv").write_text(
        header + "\n" + "\n".join(f"{a},{r}" for a, r in zip(k, rows, strict=True))
    )
    matplotlib.image.imsave(project / "results/knn_cv.png", rng.random((48, 64, 3)))

    epochs = np.arange(1, 11)
    lines = ["epoch,train_loss,train_accuracy,val_loss,val_accuracy"]
    for e in epochs:
        lines.append(
            f"{e},{2 / e:.4f},{0.3 + 0.03 * e:.4f},{2.1 / e + 0.1:.4f},"
            f"{0.28 + 0.025 * e + rng.normal(0, 0.005):.4f}"
        )
    (project / "results/mlp/history.csv").write_text("\n".join(lines) + "\n")

    for name in ("knn", "mlp"):
        actual = rng.integers(0, 10, size=200)
        wrong = rng.random(200) < 0.5
        predicted = np.where(wrong, rng.integers(0, 10, size=200), actual)
        names = np.array(CLASS_NAMES)
        pairs = [
            f"{a},{p}" for a, p in zip(names[actual], names[predicted], strict=True)
        ]
        (project / f"results/{name}/confusion.csv").write_text(
            "actual,predicted\n" + "\n".join(pairs) + "\n"
        )
        image = rng.random((48, 64, 3))
        matplotlib.image.imsave(project / f"results/{name}.png", image)


@pytest.fixture
def project(tmp_path, template) -> Path:
    """A scratch git + DVC project with this repo's plots set-up and results."""
    project = tmp_path / "project"
    project.mkdir()
    run_git(project, "init", "-q")
    run_dvc(project, "init", "-q")

    shutil.copy(ROOT / "dvc.yaml", project / "dvc.yaml")
    shutil.copy(ROOT / ".dvc" / "config", project / ".dvc" / "config")
    page = project / template.relative_to(ROOT)
    page.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(template, page)

    real = [ROOT / name for name in RESULT_FILES]
    if os.environ.get("SAVE_PLOTS_SCREENSHOT") and all(p.is_file() for p in real):
        for name in RESULT_FILES:
            (project / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / name, project / name)
    else:
        write_synthetic_results(project, seed=0)
    run_git(project, "add", "-A")
    run_git(project, "commit", "-q", "-m", "results")
    return project


def expected_plots(project: Path) -> tuple[set[str], set[str]]:
    """Vega plot ids of the top-level ``plots:`` and the image plot files."""
    dvc_yaml = yaml.safe_load((project / "dvc.yaml").read_text())
    entries = [
        next(iter(entry)) if isinstance(entry, dict) else entry
        for entry in dvc_yaml.get("plots", [])
    ]
    for stage in dvc_yaml["stages"].values():
        for entry in stage.get("plots", []):
            entries.append(next(iter(entry)) if isinstance(entry, dict) else entry)

    images = {e for e in entries if e.lower().endswith(IMAGE_SUFFIXES)}
    return set(entries) - images, images


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    children: list[Element] = field(default_factory=list)
    text: str = ""

    def walk(self):
        yield self
        for child in self.children:
            yield from child.walk()


class _TreeBuilder(HTMLParser):
    VOID = frozenset(
        "area base br col embed hr img input link meta param source track wbr".split()
    )

    def __init__(self):
        super().__init__()
        self.root = Element("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag, attrs):
        element = Element(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(element)
        if tag not in self.VOID:
            self.stack.append(element)

    def handle_startendtag(self, tag, attrs):
        self.stack[-1].children.append(Element(tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag):
        for depth in range(len(self.stack) - 1, 0, -1):
            if self.stack[depth].tag == tag:
                del self.stack[depth:]
                return

    def handle_data(self, data):
        self.stack[-1].text += data


def parse_dom(dom: str) -> Element:
    builder = _TreeBuilder()
    builder.feed(dom)
    builder.close()
    return builder.root


def is_drawn_chart(element: Element) -> bool:
    """A Vega scene: an SVG or a canvas of class ``marks`` with a non-zero size."""
    if "marks" not in element.attrs.get("class", "").split():
        return False
    if element.tag == "svg":
        return True
    if element.tag == "canvas":
        width = float(element.attrs.get("width") or 0)
        height = float(element.attrs.get("height") or 0)
        return width > 0 and height > 0
    return False


@dataclass
class PageReport:
    charts: dict[str, int]  # Vega plot id -> number of drawn scenes in its div
    images: list[str]  # src of every <img> in the plots
    errors: str  # text of the page's error box, "" if none or hidden


def inspect_page(dom: str, vega_ids: set[str]) -> PageReport:
    root = parse_dom(dom)
    charts = {}
    for element in root.walk():
        if element.tag == "div" and element.attrs.get("id") in vega_ids:
            scenes = sum(is_drawn_chart(e) for e in element.walk())
            charts[element.attrs["id"]] = scenes
    images = [e.attrs.get("src", "") for e in root.walk() if e.tag == "img"]
    errors = ""
    for element in root.walk():
        if element.attrs.get("id") == "plot-errors" and "hidden" not in element.attrs:
            errors = "".join(e.text for e in element.walk()).strip() or "(empty)"
    return PageReport(charts=charts, images=images, errors=errors)


def vega_ids_in(index: Path) -> set[str]:
    """Ids of the Vega plots DVC wrote into ``index`` (its vegaEmbed calls)."""
    ids = set()
    for line in index.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line.startswith("vegaEmbed('#"):
            ids.add(line.split("'#", 1)[1].split("'", 1)[0])
    return ids


def check_rendered(chromium: str, tmp_path: Path, project: Path, out: Path) -> None:
    index = out / "index.html"
    vega_ids, image_files = expected_plots(project)
    assert vega_ids_in(index) == vega_ids  # DVC drew each dvc.yaml plot once

    dom = run_chromium(chromium, tmp_path, index.as_uri(), "--dump-dom")
    report = inspect_page(dom, vega_ids)

    assert report.errors == ""
    assert set(report.charts) == vega_ids
    undrawn = sorted(plot for plot, scenes in report.charts.items() if scenes == 0)
    assert undrawn == []
    assert len(report.images) >= len(image_files)
    for src in report.images:
        assert (out / src).is_file(), src


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


@pytest.mark.slow
def test_plots_show_renders_offline(chromium, tmp_path, project):
    out = tmp_path / "show"

    run_dvc(project, "plots", "show", "-o", str(out))

    check_rendered(chromium, tmp_path, project, out)

    shot = tmp_path / "plots.png"
    size = f"--window-size={SCREENSHOT_SIZE[0]},{SCREENSHOT_SIZE[1]}"
    index = (out / "index.html").as_uri()
    run_chromium(chromium, tmp_path, index, f"--screenshot={shot}", size)
    assert png_size(shot) == SCREENSHOT_SIZE
    if target := os.environ.get("SAVE_PLOTS_SCREENSHOT"):
        shutil.copy(shot, target)


@pytest.mark.slow
def test_plots_diff_renders_offline(chromium, tmp_path, project):
    write_synthetic_results(project, seed=1)
    out = tmp_path / "diff"

    run_dvc(project, "plots", "diff", "HEAD", "-o", str(out))

    check_rendered(chromium, tmp_path, project, out)
    page = (out / "index.html").read_text(encoding="utf-8")
    assert '"HEAD"' in page and '"workspace"' in page  # both revisions drawn


@pytest.mark.slow
def test_default_cdn_page_draws_nothing_offline(chromium, tmp_path, project):
    run_dvc(project, "config", "--unset", "plots.html_template")
    out = tmp_path / "default"

    run_dvc(project, "plots", "show", "-o", str(out))

    index = out / "index.html"
    assert "cdn.jsdelivr.net" in index.read_text(encoding="utf-8")
    vega_ids, _ = expected_plots(project)
    dom = run_chromium(chromium, tmp_path, index.as_uri(), "--dump-dom")
    report = inspect_page(dom, vega_ids)
    assert set(report.charts) == vega_ids
    assert sum(report.charts.values()) == 0


@pytest.mark.slow
def test_error_box_reports_a_broken_chart_and_a_missing_image(
    chromium, tmp_path, template
):
    # vegaEmbed rejects when its target element does not exist.
    broken = (
        '<div id="broken"><script>vegaEmbed("#no-such-div", '
        '{"mark": "point", "data": {"values": [{"a": 1}]}});</script></div>\n'
        '<img src="no-such-image.png">'
    )
    page = template.read_text(encoding="utf-8")
    index = tmp_path / "index.html"
    index.write_text(page.replace(PLOT_DIVS, broken).replace(REFRESH_TAG, ""))

    dom = run_chromium(chromium, tmp_path, index.as_uri(), "--dump-dom")
    report = inspect_page(dom, {"broken"})

    assert report.charts == {"broken": 0}
    assert "#no-such-div does not exist" in report.errors
    assert "could not load" in report.errors and "no-such-image.png" in report.errors
