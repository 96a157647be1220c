"""params.yaml validation (params.py) and one-run overrides (with_params.py)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cifar_baselines.params import (
    SCHEMA,
    ParamsError,
    defaults,
    load_params,
    validate,
)
from cifar_baselines.with_params import apply_overrides, main

REPO = Path(__file__).resolve().parents[1]


def _with(**changes: object) -> dict:
    """The defaults with ``section__key=value`` changes applied."""
    params = defaults()
    for dotted, value in changes.items():
        section, _, key = dotted.partition("__")
        params[section][key] = value
    return params


# --- params.py --------------------------------------------------------------------


def test_repository_params_are_the_defaults() -> None:
    # params.yaml in git holds exactly the documented defaults.
    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    assert validate(raw) == defaults()


def test_every_key_is_documented() -> None:
    for section, keys in SCHEMA.items():
        for name, key in keys.items():
            assert key.help.strip(), f"{section}.{name} has no help text"


def test_load_params_returns_only_the_keys_asked(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(_with(split__seed=7)))

    got = load_params(["split.seed", "data.md5"], path=path)

    assert got == {"split": {"seed": 7}, "data": {"md5": defaults()["data"]["md5"]}}


def test_load_params_rejects_an_undeclared_key(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(defaults()))

    with pytest.raises(ParamsError, match=r"no such key 'split\.sed'"):
        load_params(["split.sed"], path=path)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"split__train_fraction": 0.0},
            r"'split\.train_fraction' must be in \(0, 1\)",
        ),
        ({"split__train_fraction": 1}, r"'split\.train_fraction' must be in \(0, 1\)"),
        ({"split__train_fraction": 1.5}, r"'split\.train_fraction' must be in"),
        ({"split__train_fraction": "0.9"}, r"'split\.train_fraction' must be a finite"),
        ({"split__train_fraction": float("nan")}, r"'split\.train_fraction' must be a"),
        ({"split__train_fraction": True}, r"'split\.train_fraction' .*, got True"),
        ({"split__seed": -1}, r"'split\.seed' must be >= 0, got -1"),
        ({"split__seed": 1.5}, r"'split\.seed' must be an integer, got 1\.5"),
        ({"split__seed": True}, r"'split\.seed' must be an integer, got True"),
        ({"split__stratify": "yes"}, r"'split\.stratify' must be true or false"),
        ({"split__stratify": 1}, r"'split\.stratify' must be true or false"),
        ({"data__md5": "xyz"}, r"'data\.md5' must be 32 hexadecimal digits"),
        ({"data__md5": "g" * 32}, r"'data\.md5' must be 32 hexadecimal digits"),
        ({"data__url": 3}, r"'data\.url' must be a string, got 3"),
        ({"data__urll": "x"}, r"unknown key 'data\.urll'"),
    ],
)
def test_bad_values_name_the_key(changes: dict, message: str) -> None:
    with pytest.raises(ParamsError, match=rf"^params\.yaml: {message}"):
        validate(_with(**changes))


def test_missing_and_unknown_sections() -> None:
    params = defaults()
    del params["split"]["seed"]
    with pytest.raises(ParamsError, match=r"missing key 'split\.seed'"):
        validate(params)

    with pytest.raises(ParamsError, match=r"unknown section 'splits'"):
        validate({**defaults(), "splits": {}})
    with pytest.raises(ParamsError, match=r"section 'split' must be a mapping"):
        validate({**defaults(), "split": [0.9]})
    with pytest.raises(ParamsError, match=r"expected a mapping of sections"):
        validate([1, 2])


def test_an_integer_is_accepted_as_a_float() -> None:
    params = validate(_with(mlp__learning_rate=1))
    assert params["mlp"]["learning_rate"] == 1.0
    assert isinstance(params["mlp"]["learning_rate"], float)


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match=r"nowhere\.yaml: cannot read"):
        load_params(path=tmp_path / "nowhere.yaml")

    bad = tmp_path / "params.yaml"
    bad.write_text("split:\n  seed: [1\n")
    with pytest.raises(ParamsError, match=r"params\.yaml: not valid YAML at line 3"):
        load_params(path=bad)


# --- with_params.py -----------------------------------------------------------------

ORIGINAL = """\
# A comment that yaml.safe_dump would drop.
data:
  url: https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz
  md5: c58f30108f718f92721af3b95e74349a   # trailing comment
"""


@pytest.fixture
def params_file(tmp_path: Path) -> Path:
    rest = {k: v for k, v in defaults().items() if k != "data"}
    path = tmp_path / "params.yaml"
    path.write_bytes((ORIGINAL + yaml.safe_dump(rest, sort_keys=False)).encode())
    return path


def _show_params(path: Path, status: int = 0) -> list[str]:
    """A command that prints ``path`` and exits with ``status``."""
    code = f"import sys; print(open({str(path)!r}).read()); sys.exit({status})"
    return [sys.executable, "-c", code]


def test_overrides_hold_during_the_command(params_file: Path, capfd) -> None:
    original = params_file.read_bytes()

    status = main(
        [
            "--params",
            str(params_file),
            "-S",
            "data.url=../archive.tar.gz",
            "-S",
            "split.seed=3",
            "--",
            *_show_params(params_file),
        ]
    )

    assert status == 0
    seen = yaml.safe_load(capfd.readouterr().out)
    assert seen["data"]["url"] == "../archive.tar.gz"
    assert seen["split"]["seed"] == 3
    assert seen["data"]["md5"] == "c58f30108f718f92721af3b95e74349a"
    assert params_file.read_bytes() == original


def test_params_are_restored_when_the_command_fails(params_file: Path) -> None:
    original = params_file.read_bytes()

    status = main(
        [
            "--params",
            str(params_file),
            "-S",
            "split.seed=3",
            "--",
            *_show_params(params_file, status=3),
        ]
    )

    assert status == 3
    assert params_file.read_bytes() == original


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("split.seed=-2", r"'split\.seed' must be >= 0"),
        ("split.train_fraction=2", r"'split\.train_fraction' must be in \(0, 1\)"),
        ("split.sed=1", r"no key 'split\.sed'"),
        ("split.seed", r"expected section\.key=value"),
    ],
)
def test_bad_overrides_change_nothing(
    params_file: Path, capfd, override: str, message: str
) -> None:
    original = params_file.read_bytes()
    marker = params_file.parent / "ran"
    command = [sys.executable, "-c", f"open({str(marker)!r}, 'w')"]

    status = main(["--params", str(params_file), "-S", override, "--", *command])

    assert status == 1
    err = capfd.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("with_params: error: ")
    assert re.search(message, err)
    assert not marker.exists()
    assert params_file.read_bytes() == original


def test_apply_overrides_parses_values_as_yaml() -> None:
    text = yaml.safe_dump(defaults())

    patched = yaml.safe_load(
        apply_overrides(text, ["split.stratify=true", "split.train_fraction=0.8"])
    )

    assert patched["split"]["stratify"] is True
    assert patched["split"]["train_fraction"] == 0.8


def test_apply_overrides_keeps_string_keys_as_text() -> None:
    text = yaml.safe_dump(defaults())
    digits_only = "1" * 32

    patched = yaml.safe_load(apply_overrides(text, [f"data.md5={digits_only}"]))

    assert patched["data"]["md5"] == digits_only


def test_params_are_restored_when_with_params_is_terminated(params_file: Path) -> None:
    original = params_file.read_bytes()
    started = params_file.parent / "started"
    # The command says it has started, then waits to be terminated.
    command = (
        f"import pathlib, time; pathlib.Path({str(started)!r}).touch(); time.sleep(60)"
    )
    wrapper = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cifar_baselines.with_params",
            "--params",
            str(params_file),
            "-S",
            "split.seed=3",
            "--",
            sys.executable,
            "-c",
            command,
        ]
    )
    deadline = time.monotonic() + 30
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert started.exists(), "the command did not start"
    assert yaml.safe_load(params_file.read_text())["split"]["seed"] == 3

    wrapper.send_signal(signal.SIGTERM)

    assert wrapper.wait(timeout=30) != 0
    assert params_file.read_bytes() == original
