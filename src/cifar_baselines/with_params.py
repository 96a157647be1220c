"""Run a command with some params overridden, then put ``params.yaml`` back.

``python -m cifar_baselines.with_params -S data.url=PATH -S data.md5=HEX -- dvc repro``
rewrites the named keys in ``params.yaml``, runs the command, and restores the
file byte for byte however the command ends, also when this process is sent
SIGTERM or SIGHUP (it passes them on and waits for the command to stop).  It
is how the pipeline is pointed at a local copy of the archive for one run
without changing the defaults kept in git.  Values are parsed as YAML, as
``dvc exp run -S`` does, except for string keys, which keep the text as given.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
from pathlib import Path

import yaml

from cifar_baselines.atomic import atomic_path
from cifar_baselines.params import PARAMS_FILE, SCHEMA, ParamsError, validate


def apply_overrides(text: str, overrides: list[str]) -> str:
    """Return the YAML ``text`` with each ``section.key=value`` applied."""
    raw = yaml.safe_load(text) or {}
    for item in overrides:
        dotted, sep, value = item.partition("=")
        section, _, name = dotted.partition(".")
        if not sep or not name:
            raise ParamsError(f"override {item!r}: expected section.key=value")
        if section not in raw or name not in raw[section]:
            raise ParamsError(f"override {item!r}: no key '{dotted}' in {PARAMS_FILE}")
        # String keys keep the text as given: an md5 of decimal digits only
        # must not turn into an integer.
        kind = SCHEMA.get(section, {}).get(name)
        string = kind is not None and kind.kind in ("str", "choice")
        raw[section][name] = value if string else yaml.safe_load(value)
    validate(raw, source=f"{PARAMS_FILE} (overridden)")
    return yaml.safe_dump(raw, sort_keys=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-S", dest="overrides", action="append", default=[])
    parser.add_argument("--params", default=PARAMS_FILE)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given after --")

    path = Path(args.params)
    original = path.read_bytes()
    try:
        patched = apply_overrides(original.decode("utf-8"), args.overrides)
    except ParamsError as exc:
        print(f"with_params: error: {exc}", file=sys.stderr)
        return 1

    try:
        with atomic_path(path) as tmp:
            tmp.write_text(patched, encoding="utf-8")
        return _run_to_the_end(command)
    finally:
        with atomic_path(path) as tmp:
            tmp.write_bytes(original)


def _run_to_the_end(command: list[str]) -> int:
    """Run ``command`` and return its status once it has exited.

    The params file may be put back only when the command no longer reads it.
    SIGTERM and SIGHUP sent to this process are passed on to the command, and
    Ctrl-C (which the terminal sends to both) is left to the command; either
    way this process waits for the command to stop before returning.
    """
    process = subprocess.Popen(command)

    def pass_on(signum: int, _frame: object) -> None:
        process.send_signal(signum)

    handled = {signal.SIGTERM: pass_on, signal.SIGHUP: pass_on}
    handled[signal.SIGINT] = signal.SIG_IGN
    previous = {signum: signal.signal(signum, how) for signum, how in handled.items()}
    try:
        return process.wait()
    finally:
        for signum, how in previous.items():
            signal.signal(signum, how)


if __name__ == "__main__":
    sys.exit(main())
