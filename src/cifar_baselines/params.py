"""Load and validate ``params.yaml``.

Every key the pipeline understands is declared once in :data:`SCHEMA` with its
type, default and meaning.  :func:`load_params` checks the whole file on load
(unknown sections or keys, wrong types, values out of range) and raises
:class:`ParamsError` with a one-line message that names the key path, before a
stage does any heavy work.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cifar_baselines.errors import PipelineError

PARAMS_FILE = "params.yaml"


class ParamsError(PipelineError):
    """A params file that is missing, unreadable or holds an invalid value."""


@dataclass(frozen=True)
class Key:
    """One params key: its expected type, default value and meaning."""

    kind: str  # "int", "float", "bool", "str", "choice", "int_list", "float_list"
    default: Any
    help: str
    check: Callable[[Any], str | None] | None = None
    choices: tuple[str, ...] = ()


def _positive(value: Any) -> str | None:
    return None if value > 0 else f"must be > 0, got {value!r}"


def _non_negative(value: Any) -> str | None:
    return None if value >= 0 else f"must be >= 0, got {value!r}"


def _open_unit(value: Any) -> str | None:
    return None if 0 < value < 1 else f"must be in (0, 1), got {value!r}"


def _unit_or_zero(value: Any) -> str | None:
    return None if 0 <= value < 1 else f"must be in [0, 1), got {value!r}"


def _hex_md5(value: Any) -> str | None:
    ok = len(value) == 32 and all(c in "0123456789abcdef" for c in value.lower())
    return None if ok else f"must be 32 hexadecimal digits, got {value!r}"


def _folds(value: Any) -> str | None:
    if value == 0 or value >= 2:
        return None
    return f"must be 0 (no cross-validation) or at least 2, got {value!r}"


def _positive_list(value: Any) -> str | None:
    if not value:
        return "must list at least one value"
    if min(value) <= 0:
        return f"must hold only values > 0, got {min(value)!r}"
    if len(set(value)) != len(value):
        return "must not repeat a value"
    return None


def _k_list(value: Any) -> str | None:
    if not value:
        return "must list at least one k"
    if min(value) < 1:
        return f"must hold only k >= 1, got {min(value)}"
    if len(set(value)) != len(value):
        return "must not repeat a k"
    return None


SCHEMA: dict[str, dict[str, Key]] = {
    "data": {
        "url": Key(
            "str",
            "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
            "Where the CIFAR-10 python archive comes from: an http(s) URL, a "
            "file:// URL, or a path relative to the repository root.",
        ),
        "md5": Key(
            "str",
            "c58f30108f718f92721af3b95e74349a",
            "Expected md5 of the archive, checked before it is unpacked.",
            _hex_md5,
        ),
    },
    "split": {
        "train_fraction": Key(
            "float",
            0.9,
            "Share of the 60,000 images used for training; the rest is the test split.",
            _open_unit,
        ),
        "seed": Key("int", 0, "Seed of the shuffled train/test split.", _non_negative),
        "stratify": Key("bool", False, "Keep class proportions equal in both splits."),
    },
    "features": {
        "kind": Key(
            "choice",
            "raw",
            "What both classifiers see (stage features): the raw pixels, copied "
            "unchanged as uint8; HOG descriptors; HSV colour histograms; or HOG and "
            "colour histograms side by side (descriptors are float32). Anything but "
            "raw needs mlp.flip false.",
            choices=("raw", "hog", "color_hist", "hog+color_hist"),
        ),
        "hog_orientations": Key(
            "int",
            9,
            "HOG (kinds hog, hog+color_hist): orientation bins per cell.",
            _positive,
        ),
        "hog_pixels_per_cell": Key(
            "int",
            8,
            "HOG: side of a square cell, in pixels (at most 32).",
            _positive,
        ),
        "hog_cells_per_block": Key(
            "int",
            2,
            "HOG: side of a square normalisation block, in cells (at most the "
            "cells per image side, 32 // hog_pixels_per_cell).",
            _positive,
        ),
        "color_bins": Key(
            "int",
            10,
            "Colour histogram (kinds color_hist, hog+color_hist): bins for each of "
            "hue, saturation and value.",
            _positive,
        ),
    },
    "knn": {
        "k_values": Key(
            "int_list",
            list(range(1, 21)),
            "Numbers of neighbours to evaluate; the best one is reported.",
            _k_list,
        ),
        "chunk_mib": Key(
            "int",
            256,
            "Memory budget in MiB for the temporaries of one chunk of the "
            "distance matrix.",
            _positive,
        ),
    },
    "mlp": {
        "hidden_units": Key(
            "int", 64, "Width of the hidden layer (the tutorial's d_h).", _positive
        ),
        "activation": Key(
            "choice",
            "sigmoid",
            "Hidden-layer activation; the output layer is always a softmax.",
            choices=("sigmoid", "relu"),
        ),
        "init": Key(
            "choice",
            "xavier",
            "Initial weights: N(0, 1) as in the tutorial, Xavier N(0, 2/(fan_in + "
            "fan_out)) or He N(0, 2/fan_in); biases start at 0.",
            choices=("normal", "xavier", "he"),
        ),
        "scaling": Key(
            "choice",
            "standardize",
            "Input scaling: none, divide by 255, or standardise each pixel by its "
            "mean and std over the training part only (the model file keeps them).",
            choices=("none", "divide255", "standardize"),
        ),
        "pca_components": Key(
            "int",
            0,
            "0 trains on the scaled pixels; k > 0 on their projections onto the k "
            "leading principal components of the training part, partially "
            "whitened (folded into the first layer of the saved model).",
            _non_negative,
        ),
        "batch_size": Key(
            "int",
            256,
            "Images per gradient step, reshuffled every epoch; 0 is the tutorial's "
            "one full-batch step per epoch.",
            _non_negative,
        ),
        "epochs": Key("int", 10, "Passes over the training part.", _positive),
        "learning_rate": Key("float", 0.1, "Step size of the first epoch.", _positive),
        "momentum": Key(
            "float",
            0.9,
            "Heavy-ball momentum (v = momentum v + g; w -= lr v); 0 is plain SGD.",
            _unit_or_zero,
        ),
        "schedule": Key(
            "choice",
            "cosine",
            "Learning rate per epoch: constant; cosine, from learning_rate down "
            "towards 0; step, divided by 10 after 1/2 and again after 3/4 of the "
            "epochs.",
            choices=("constant", "cosine", "step"),
        ),
        "weight_decay": Key(
            "float",
            0.0005,
            "L2 penalty: weight_decay/2 times the sum of the squared weights of w1 "
            "and w2 (not the biases) is added to the loss minimised.",
            _non_negative,
        ),
        "flip": Key(
            "bool",
            True,
            "Mirror each training image left-right with probability 1/2 at every "
            "step (augmentation; validation and test images are never flipped).",
        ),
        "validation_fraction": Key(
            "float",
            0.1,
            "Share of the training split held out to draw the learning curves and "
            "to choose the epoch whose weights are kept (the best validation "
            "accuracy); the test split is used for neither.",
            _open_unit,
        ),
        "seed": Key(
            "int",
            0,
            "Seed of the validation hold-out, initial weights, batch order and flips.",
            _non_negative,
        ),
    },
    "cv": {
        "folds": Key(
            "int",
            5,
            "Stratified folds of the training split on which k is chosen (stage "
            "knn_cv) before the one evaluation of that k on the test split; 0 "
            "turns cross-validation off, and knn_sweep then reports the k best on "
            "the test split itself, as the tutorial does. 5 folds cost one more "
            "pass of kNN over the training split: on raw pixels (54,000 images, 2 "
            "cores) 121 to 232 s in the runs measured, with other jobs sharing "
            "the machine; on HOG descriptors about 20 s.",
            _folds,
        ),
        "seed": Key("int", 0, "Seed of the fold assignment.", _non_negative),
        "mlp": Key(
            "bool",
            False,
            "Also choose mlp.hidden_units and mlp.learning_rate by cross-validation "
            "(stage mlp_cv) over the grid below, with the other mlp keys as set; "
            "needs folds > 0. Off by default: it trains the MLP folds x grid "
            "points times (20 with the defaults). When off, mlp_train uses "
            "mlp.hidden_units and mlp.learning_rate as set.",
        ),
        "mlp_hidden_units": Key(
            "int_list",
            [256, 512],
            "MLP grid (with cv.mlp): hidden-layer widths tried.",
            _positive_list,
        ),
        "mlp_learning_rates": Key(
            "float_list",
            [0.02, 0.05],
            "MLP grid (with cv.mlp): learning rates tried.",
            _positive_list,
        ),
    },
}


def defaults() -> dict[str, dict[str, Any]]:
    """Return the default value of every key, section by section."""
    return {
        section: {name: key.default for name, key in keys.items()}
        for section, keys in SCHEMA.items()
    }


def _type_error(key: Key, value: Any) -> str | None:
    """Return why ``value`` does not have the type ``key`` expects, if it does not."""
    kind = key.kind
    if kind == "bool":
        ok = isinstance(value, bool)
        expected = "true or false"
    elif kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
        expected = "an integer"
    elif kind == "float":
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        ok = ok and math.isfinite(value)
        expected = "a finite number"
    elif kind in ("str", "choice"):
        ok = isinstance(value, str)
        expected = "a string"
    elif kind == "int_list":
        ok = isinstance(value, list) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        )
        expected = "a list of integers"
    elif kind == "float_list":
        ok = isinstance(value, list) and all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            for v in value
        )
        expected = "a list of finite numbers"
    else:  # pragma: no cover - a schema error, not a user error
        raise AssertionError(f"unknown kind {kind!r}")
    if ok:
        return None
    return f"must be {expected}, got {value!r}"


def validate(raw: Any, source: str = PARAMS_FILE) -> dict[str, dict[str, Any]]:
    """Check a parsed params mapping against :data:`SCHEMA` and return it.

    Raises :class:`ParamsError` naming ``source`` and the first offending key.
    """
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping of sections at top level")

    for section, values in raw.items():
        if section not in SCHEMA:
            raise ParamsError(f"{source}: unknown section {section!r}")
        if not isinstance(values, dict):
            raise ParamsError(f"{source}: section {section!r} must be a mapping")
        for name in values:
            if name not in SCHEMA[section]:
                raise ParamsError(f"{source}: unknown key '{section}.{name}'")

    clean: dict[str, dict[str, Any]] = {}
    for section, keys in SCHEMA.items():
        values = raw.get(section, {})
        clean[section] = {}
        for name, key in keys.items():
            path = f"{section}.{name}"
            if name not in values:
                raise ParamsError(f"{source}: missing key '{path}'")
            value = values[name]
            problem = _type_error(key, value)
            if problem is None and key.kind == "choice" and value not in key.choices:
                allowed = ", ".join(key.choices)
                problem = f"must be one of {allowed}, got {value!r}"
            if problem is None and key.check is not None:
                problem = key.check(value)
            if problem is not None:
                raise ParamsError(f"{source}: '{path}' {problem}")
            if key.kind == "float":
                value = float(value)
            elif key.kind == "float_list":
                value = [float(v) for v in value]
            clean[section][name] = value
    return clean


def load_params(
    keys: Iterable[str] | None = None, path: str | os.PathLike = PARAMS_FILE
) -> dict[str, dict[str, Any]]:
    """Read, validate and return the params file.

    The whole file is validated whatever ``keys`` asks for.  With ``keys`` (a
    list of ``"section.name"`` paths) only those keys are returned, so a stage
    can read nothing it has not declared to DVC.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ParamsError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise ParamsError(f"{path}: not valid YAML{line}") from None

    params = validate(raw if raw is not None else {}, source=str(path))
    if keys is None:
        return params

    picked: dict[str, dict[str, Any]] = {}
    for dotted in keys:
        section, _, name = dotted.partition(".")
        if section not in params or name not in params[section]:
            raise ParamsError(f"{path}: no such key '{dotted}'")
        picked.setdefault(section, {})[name] = params[section][name]
    return picked


def check_mlp_inputs(
    mlp: dict[str, Any], kind: str, n_columns: int, inputs: str | os.PathLike
) -> None:
    """Check the ``mlp`` keys that depend on the inputs the MLP stages read.

    ``mlp`` holds ``flip`` and ``pca_components``; ``kind`` is
    ``features.kind`` and ``n_columns`` the width of the rows in ``inputs``.
    Raises :class:`ParamsError` naming the key when flips are asked for rows
    that are not pixels, or more principal components than there are columns.
    """
    if mlp["flip"] and kind != "raw":
        raise ParamsError(
            f"{PARAMS_FILE}: 'mlp.flip' is true but 'features.kind' is {kind!r}: "
            "only raw pixel rows can be mirrored; set mlp.flip to false"
        )
    if mlp["pca_components"] > n_columns:
        raise ParamsError(
            f"{PARAMS_FILE}: 'mlp.pca_components' is {mlp['pca_components']}, "
            f"more than the {n_columns} values per image of {inputs} "
            f"(features.kind {kind!r})"
        )


def _format_default(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(str(v) for v in value) + "]"
    return str(value)


def reference_table() -> str:
    """Return the params reference as a Markdown table, one row per key.

    README.md carries this table between two marker comments; a test checks
    that the copy there is current.
    """
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for section, keys in SCHEMA.items():
        for name, key in keys.items():
            meaning = key.help
            if key.kind == "choice":
                meaning += " One of: " + ", ".join(f"`{c}`" for c in key.choices) + "."
            default = _format_default(key.default)
            rows.append(f"| `{section}.{name}` | `{default}` | {meaning} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(reference_table(), end="")
