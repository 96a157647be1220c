"""A perceptron with one hidden layer, written with numpy alone.

The classic tutorial's names and signatures are kept: :func:`sigmoid`,
:func:`softmax_stable`, :func:`one_hot`, :func:`learn_once_mse`,
:func:`learn_once_cross_entropy`, :func:`train_mlp`, :func:`test_mlp` and
:func:`run_mlp_training`, with its shapes: ``data`` (n_samples, d_in), ``w1``
(d_in, d_h), ``b1`` (1, d_h), ``w2`` (d_h, d_out), ``b2`` (1, d_out).  Called
as in the tutorial they train as the tutorial does: one full-batch step per
epoch, sigmoid hidden layer, no momentum, no input scaling.

What the pipeline adds is reached through keyword-only arguments of
:func:`train_mlp` and through :func:`fit_mlp`, which the ``mlp_train`` stage
calls with the ``mlp`` section of ``params.yaml``: mini-batches, momentum, a
learning-rate schedule, L2 weight decay, ReLU, Xavier or He initialisation,
input scaling fitted on the training part, an optional projection onto the
leading principal components (:func:`fit_pca`), random horizontal flips, and
a validation part held out of the training split to draw learning curves and
to pick the epoch whose weights are kept.  :class:`MLPModel` bundles what is
needed to classify new images (weights, activation, input scaling) and saves
itself as one ``.npz`` file.

The gradients are computed by :func:`gradients_mse` and
:func:`gradients_cross_entropy`; ``docs/backprop.md`` derives every line of
them, and ``tests/test_mlp.py`` checks them against central finite
differences in float64.  Training runs in float32 with in-place updates and no
Python loop over samples: every step is a handful of matrix products.

Speed: with OpenBLAS on 2 threads, an epoch of the default 64-unit network
takes 1.43 to 1.48 times its matrix products alone (``bench/mlp.py``, part
``epochs``, medians of the epochs after the first in seven runs on the
evening of 4 December 2026: epochs of 0.33 to 0.35 s against products of 0.23
to 0.24 s), and an epoch of the stronger configuration's 1,024 units 1.40 to
1.44 times.  The rest of an epoch is memory-bound work on one core: drawing
batches (gathering the uint8 rows, converting them to float32), the momentum
and weight-decay steps over the 200,000 weights, and the small element-wise
work around the products.  What keeps it short: each step draws its batch
with one gather of sorted rows from the uint8 rows stacked with their mirror
images; a second thread draws each batch two steps ahead, into one of two
float32 buffers, so that the draw overlaps the momentum steps and element-wise
work of the steps before it (:class:`_DrawAhead`); the input scaling and the
first layer's bias are folded into the first layer's product
(:class:`_FoldedScaling`); gradients, steps and weights live in preallocated
flat arrays updated in place; and the stages import
:mod:`cifar_baselines.blas_threads` first, so that OpenBLAS's idle threads
sleep at once instead of spinning between the short products (their spinning
made the memory-bound work three to four times slower for stretches of seconds
to minutes, and left no core free for the second thread).  Measured and not
kept, because epochs were longer or no shorter: drawing only the next batch,
into one buffer, while this thread makes the momentum step (1.51 to 1.58
times in six runs), three buffers instead of two, the drawing thread at the
idle scheduling priority, drawing the next batch while the products run (they
then compete for the two cores), sharing the draw between the two threads in
chunks of rows, a float32 copy of all training rows, splitting the momentum
step between two threads, the momentum step as BLAS ``saxpy`` calls (and,
timed alone, as one matrix-vector product over the stacked step, gradient and
weight arrays: twice as slow), updating w1 in row blocks that fit the L2
cache, 512-row batches (fewer steps, but 1 point less validation accuracy).
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from cifar_baselines.atomic import atomic_path
from cifar_baselines.errors import PipelineError

ACTIVATIONS = ("sigmoid", "relu")
INITS = ("normal", "xavier", "he")
SCALINGS = ("none", "divide255", "standardize")
SCHEDULES = ("constant", "cosine", "step")

N_CLASSES = 10
IMAGE_SHAPE = (3, 32, 32)  # one CIFAR-10 row: red, green, blue planes of 32 x 32
IMAGE_SIZE = math.prod(IMAGE_SHAPE)

# One seed drives three independent random streams, numpy generators seeded
# with [seed, stream]: the validation hold-out, the initial weights, and the
# batch order and flips of training.
HOLD_OUT, INIT, TRAINING = 0, 1, 2

# At most this many rows estimate the covariance matrix in fit_pca (the cost of
# the estimate is n_rows x d_in^2: 20,000 x 3072^2 x 2 = 0.38 TFLOP).
PCA_ROWS = 20_000

# Rows scaled and evaluated at a time by MLPModel (bounds the float32 temporaries:
# 8192 rows x 3072 values x 4 bytes = 96 MiB).
EVAL_ROWS = 8192

# Mini-batches are drawn this many steps ahead of the step that takes them, by
# a second thread (see train_mlp), into as many buffers.
AHEAD = 2

EpochCallback = Callable[[int, dict[str, float]], None]


class TrainingDivergedError(PipelineError):
    """The training loss or the weights became NaN or infinite."""


class Gradients(NamedTuple):
    """Gradients of a loss with respect to each parameter array, same shapes."""

    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: np.ndarray


# --------------------------------------------------------------------------- #
# Validation                                                                   #
# --------------------------------------------------------------------------- #


def _as_float(name: str, x: Any) -> np.ndarray:
    """Return ``x`` as a floating array (float64 if it held integers)."""
    x = np.asarray(x)
    if x.dtype.kind not in "fiub":
        raise ValueError(f"{name} must hold real numbers, got dtype {x.dtype}")
    return x if x.dtype.kind == "f" else x.astype(np.float64)


def _check_network(
    w1: Any, b1: Any, w2: Any, b2: Any, data: Any, *, float_data: bool = True
) -> tuple[np.ndarray, ...]:
    """Return the five arrays, of matching shapes, as floating arrays.

    With ``float_data=False`` the data keeps its dtype (integers allowed).
    """
    names, weights = ("w1", "b1", "w2", "b2"), (w1, b1, w2, b2)
    w1, b1, w2, b2 = (_as_float(n, x) for n, x in zip(names, weights, strict=True))
    data = _as_float("data", data) if float_data else np.asarray(data)
    if data.dtype.kind not in "fiu":
        raise ValueError(f"data must hold real numbers, got dtype {data.dtype}")
    if data.ndim != 2 or w1.ndim != 2 or w2.ndim != 2:
        raise ValueError(
            "data, w1 and w2 must be 2-D, got shapes "
            f"{data.shape}, {w1.shape} and {w2.shape}"
        )
    d_in, d_h = w1.shape
    d_out = w2.shape[1]
    if data.shape[1] != d_in:
        raise ValueError(
            f"data has shape {data.shape} and w1 has shape {w1.shape}: expected "
            f"data of shape (n_samples, {d_in})"
        )
    if w2.shape[0] != d_h:
        raise ValueError(
            f"w1 has shape {w1.shape} and w2 has shape {w2.shape}: expected w2 of "
            f"shape ({d_h}, d_out)"
        )
    if b1.shape != (1, d_h) or b2.shape != (1, d_out):
        raise ValueError(
            f"b1 has shape {b1.shape} and b2 has shape {b2.shape}: expected "
            f"(1, {d_h}) and (1, {d_out})"
        )
    return w1, b1, w2, b2, data


def _check_finite_data(name: str, x: np.ndarray) -> None:
    """Refuse NaN or infinite values (min and max propagate both; no temporary)."""
    if x.dtype.kind != "f" or x.size == 0:
        return
    if not (np.isfinite(x.min()) and np.isfinite(x.max())):
        raise ValueError(f"{name} holds NaN or infinite values")


def _check_labels(labels: Any, n_samples: int, n_classes: int) -> np.ndarray:
    """Return ``labels`` as a 1-D int64 array of ``n_samples`` class indices."""
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu" or labels.shape != (n_samples,):
        raise ValueError(
            f"labels must be integers of shape ({n_samples},), got dtype "
            f"{labels.dtype} and shape {labels.shape}"
        )
    if n_samples and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(
            f"labels must be in 0..{n_classes - 1}, found "
            f"{labels.min()}..{labels.max()}"
        )
    return labels.astype(np.int64, copy=False)


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _check_number(
    name: str, value: Any, *, low: float, high: float = math.inf, integer: bool = False
) -> Any:
    """Check that ``value`` is a number (an integer if asked) in ``[low, high)``."""
    kinds = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    if isinstance(value, bool) or not isinstance(value, kinds):
        kind = "an integer" if integer else "a number"
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    if not (low <= value < high) or (not integer and not math.isfinite(value)):
        top = "" if high == math.inf else f" and < {high:g}"
        raise ValueError(f"{name} must be >= {low:g}{top}, got {value!r}")
    return value


def _check_positive(name: str, value: Any) -> float:
    value = _check_number(name, value, low=0.0)
    if value == 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    return float(value)


# --------------------------------------------------------------------------- #
# Building blocks                                                             #
# --------------------------------------------------------------------------- #


def _sigmoid_(z: np.ndarray) -> np.ndarray:
    """Overwrite the float array ``z`` with sigmoid(z) and return it."""
    np.negative(z, out=z)
    with np.errstate(over="ignore"):  # exp(-z) = inf for z < -88 (float32): σ = 0
        np.exp(z, out=z)
    z += 1
    return np.reciprocal(z, out=z)


def _relu_(z: np.ndarray) -> np.ndarray:
    """Overwrite ``z`` with max(z, 0) and return it."""
    return np.maximum(z, 0, out=z)


def _softmax_(z: np.ndarray) -> np.ndarray:
    """Overwrite the 2-D float array ``z`` with its row-wise softmax."""
    z -= z.max(axis=1, keepdims=True)  # now every exponent is <= 0: no overflow
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)  # each sum is >= 1 (its max term is e^0)
    return z


_IN_PLACE = {"sigmoid": _sigmoid_, "relu": _relu_, "softmax": _softmax_}

# The smallest positive normal number of each float dtype: the floor of a
# probability whose logarithm is taken.
_TINY = {
    np.dtype(t): np.finfo(t).tiny
    for t in (np.float16, np.float32, np.float64, np.longdouble)
}


def sigmoid(z: Any) -> np.ndarray:
    """Logistic function ``1 / (1 + exp(-z))``, element-wise.

    Parameters
    ----------
    z : array_like of any shape

    Returns
    -------
    ndarray of the shape of ``z``
        In the float dtype of ``z`` (float64 for integers).  Very negative
        inputs give exactly 0 and very positive ones exactly 1, with no warning.
    """
    return _sigmoid_(np.array(_as_float("z", z), copy=True))


def softmax_stable(z: Any) -> np.ndarray:
    """Row-wise softmax, computed after subtracting each row's maximum.

    Parameters
    ----------
    z : array_like of shape (n_samples, n_classes)
        Logits; any finite values (±1000 included) give finite probabilities.

    Returns
    -------
    ndarray of shape (n_samples, n_classes)
        Each row sums to 1.
    """
    z = _as_float("z", z)
    if z.ndim != 2:
        raise ValueError(f"z must be 2-D (n_samples, n_classes), got shape {z.shape}")
    return _softmax_(np.array(z, copy=True))


def one_hot(
    labels: Any, n_classes: int = N_CLASSES, dtype: Any = np.float32
) -> np.ndarray:
    """One-hot encoding of integer labels, along a new last axis.

    Parameters
    ----------
    labels : array_like of integers, any shape (...)
        Each in ``0 .. n_classes - 1``.
    n_classes : int, default 10
    dtype : dtype, default float32

    Returns
    -------
    ndarray of shape (..., n_classes)
        ``out[..., c]`` is 1 where ``labels == c`` and 0 elsewhere.
    """
    _check_number("n_classes", n_classes, low=1, integer=True)
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(
            f"labels must be in 0..{n_classes - 1}, found "
            f"{labels.min()}..{labels.max()}"
        )
    return (labels[..., np.newaxis] == np.arange(n_classes)).astype(dtype)


def mse_loss(predictions: Any, targets: Any) -> float:
    """Mean squared error, averaged over samples *and* outputs.

    ``C = 1/(N d_out) sum_i sum_j (A[i, j] - Y[i, j])^2`` for predictions ``A``
    and targets ``Y`` of shape (N, d_out), as ``np.mean`` computes it in the
    tutorial.  Its gradient with respect to the predictions is
    ``2 (A - Y) / (N d_out)``.
    """
    predictions, targets = _as_float("predictions", predictions), np.asarray(targets)
    if predictions.shape != targets.shape:
        raise ValueError(
            f"predictions have shape {predictions.shape} and targets "
            f"{targets.shape}: expected equal shapes"
        )
    return float(np.mean(np.square(predictions - targets)))


def _cross_entropy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    picked = probabilities[np.arange(len(labels)), labels]  # a new array
    np.maximum(picked, _TINY[picked.dtype], out=picked)
    np.log(picked, out=picked)
    return -float(np.add.reduce(picked, dtype=np.float64) / len(labels))


def cross_entropy_loss(probabilities: Any, labels: Any) -> float:
    """Cross-entropy of predicted class probabilities, averaged over samples.

    ``C = -1/N sum_i log P[i, y_i]``: a mean over the N samples, not a sum.
    With ``P = softmax(Z)`` its gradient with respect to the logits ``Z`` is
    ``(P - Y) / N``, ``Y`` the one-hot labels (``docs/backprop.md``).

    Parameters
    ----------
    probabilities : array_like of shape (n_samples, n_classes)
        Rows of a softmax.  A probability of 0 for the true class gives a large
        finite loss, not inf: probabilities are clipped below at the smallest
        positive normal number of their dtype (``-log`` of it is 87.3 in
        float32, 708.4 in float64).
    labels : array_like of integers, shape (n_samples,)

    Returns
    -------
    float
    """
    probabilities = _as_float("probabilities", probabilities)
    if probabilities.ndim != 2 or probabilities.shape[0] == 0:
        raise ValueError(
            "probabilities must be 2-D (n_samples, n_classes) with n_samples > 0, "
            f"got shape {probabilities.shape}"
        )
    n, n_classes = probabilities.shape
    return _cross_entropy(probabilities, _check_labels(labels, n, n_classes))


def per_class_accuracy(
    labels: Any, predictions: Any, n_classes: int = N_CLASSES
) -> np.ndarray:
    """Accuracy on the samples of each class.

    Parameters
    ----------
    labels, predictions : ndarray of integers, shape (n_samples,)
        True and predicted classes.
    n_classes : int, default 10

    Returns
    -------
    ndarray of shape (n_classes,), float64
        ``out[c]`` is the share of samples of class ``c`` predicted as ``c``,
        NaN for a class with no sample.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    labels = _check_labels(labels, len(labels), n_classes)
    predictions = _check_labels(predictions, len(labels), n_classes)
    total = np.bincount(labels, minlength=n_classes)
    correct = np.bincount(labels[predictions == labels], minlength=n_classes)
    with np.errstate(invalid="ignore"):
        return correct / total


# --------------------------------------------------------------------------- #
# Forward and backward passes                                                 #
# --------------------------------------------------------------------------- #


def _forward(
    w1: np.ndarray,
    b1: np.ndarray,
    w2: np.ndarray,
    b2: np.ndarray,
    data: np.ndarray,
    activation: str,
    output: str,
    shift_row: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """The forward pass on checked arrays; see :func:`forward`.

    With ``shift_row``, ``data`` (n + 1, d_in) holds a row ``c`` before the n
    rows ``x`` of the batch, and the first layer sees the rows ``x + c``:
    ``(x + c) @ w1 = x @ w1 + c @ w1``, both terms from the one product
    ``data @ w1``.
    """
    z1 = data @ w1  # Z1, (n, d_h) or (n + 1, d_h), overwritten by A1
    a1 = z1
    if shift_row:
        a1 = z1[1:]
        a1 += z1[0]
    a1 += b1
    _IN_PLACE[activation](a1)

    a2 = a1 @ w2  # Z2, (n, d_out), overwritten by A2
    a2 += b2
    _IN_PLACE[output](a2)
    return a1, a2


def forward(
    w1: Any,
    b1: Any,
    w2: Any,
    b2: Any,
    data: Any,
    *,
    activation: str = "sigmoid",
    output: str = "softmax",
) -> tuple[np.ndarray, np.ndarray]:
    """Run the network on ``data``.

    ``A1 = activation(data @ w1 + b1)`` and ``A2 = output(A1 @ w2 + b2)``.

    Parameters
    ----------
    w1, b1, w2, b2 : ndarray of shapes (d_in, d_h), (1, d_h), (d_h, d_out), (1, d_out)
    data : ndarray of shape (n_samples, d_in)
    activation : {"sigmoid", "relu"}, default "sigmoid"
        Of the hidden layer.
    output : {"softmax", "sigmoid"}, default "softmax"
        Of the output layer: softmax for cross-entropy, sigmoid for the
        tutorial's MSE network.

    Returns
    -------
    a1 : ndarray of shape (n_samples, d_h)
        Hidden activations.
    a2 : ndarray of shape (n_samples, d_out)
        Outputs; with softmax, class probabilities.
    """
    w1, b1, w2, b2, data = _check_network(w1, b1, w2, b2, data)
    _check_choice("activation", activation, ACTIVATIONS)
    _check_choice("output", output, ("softmax", "sigmoid"))
    return _forward(w1, b1, w2, b2, data, activation, output)


def _backward(
    w2: np.ndarray,
    data: np.ndarray,
    a1: np.ndarray,
    dz2: np.ndarray,
    activation: str,
    shift_row: bool = False,
    out: Gradients | None = None,
) -> Gradients:
    """Back-propagate ``dz2`` = dC/dZ2 through the network (docs/backprop.md).

    With ``shift_row``, ``data`` (n + 1, d_in) holds a row ``c`` before the n
    rows ``x`` of the batch, and ``dw1`` is the gradient for the rows
    ``x + c``: ``x.T @ dz1 + c.T @ db1`` (db1 the column sums of dz1), taken
    in one product as ``data.T @ [db1; dz1]``.  With ``out``, the gradients
    are written into its arrays, which are returned.
    """
    into = out if out is not None else Gradients(None, None, None, None)
    dw2 = np.matmul(a1.T, dz2, out=into.w2)
    db2 = np.sum(dz2, axis=0, keepdims=True, out=into.b2)

    first = int(shift_row)  # the row of `stacked` where dz1 starts
    stacked = np.empty((first + len(a1), a1.shape[1]), a1.dtype)
    da1 = np.matmul(dz2, w2.T, out=stacked[first:])  # (n, d_h), then dC/dZ1
    if activation == "sigmoid":
        dz1 = np.multiply(da1, a1 * (1 - a1), out=da1)  # σ'(Z1) = A1 (1 - A1)
    else:
        dz1 = np.multiply(da1, a1 > 0, out=da1)  # ReLU'(Z1) = 1 where Z1 > 0
    db1 = np.sum(dz1, axis=0, keepdims=True, out=into.b1)
    if shift_row:
        stacked[0] = db1
    # data.T @ dz1, or data.T @ [db1; dz1]
    dw1 = np.matmul(data.T, stacked, out=into.w1)
    return Gradients(dw1, db1, dw2, db2)


def _cross_entropy_step(
    w1: np.ndarray,
    b1: np.ndarray,
    w2: np.ndarray,
    b2: np.ndarray,
    data: np.ndarray,
    labels: np.ndarray,
    activation: str,
    shift_row: bool = False,
    out: Gradients | None = None,
) -> tuple[float, Gradients, np.ndarray]:
    """Loss, gradients and probabilities on checked arrays.

    With ``shift_row``, the batch is ``data[1:]`` and ``data[0]`` a row added
    to each of its rows (see :func:`_forward` and :func:`_backward`).  With
    ``out``, the gradients are written into its arrays.
    """
    a1, a2 = _forward(w1, b1, w2, b2, data, activation, "softmax", shift_row)
    loss = _cross_entropy(a2, labels)

    n = len(a2)
    dz2 = a2.copy()
    dz2[np.arange(n), labels] -= 1  # A2 - Y
    dz2 /= n
    return loss, _backward(w2, data, a1, dz2, activation, shift_row, out), a2


def gradients_mse(
    w1: Any, b1: Any, w2: Any, b2: Any, data: Any, targets: Any
) -> tuple[float, Gradients, np.ndarray]:
    """Loss and gradients of the tutorial's MSE network (sigmoid, then sigmoid).

    The loss is :func:`mse_loss`, a mean over samples and outputs.

    Parameters
    ----------
    w1, b1, w2, b2 : ndarray of shapes (d_in, d_h), (1, d_h), (d_h, d_out), (1, d_out)
    data : ndarray of shape (n_samples, d_in)
    targets : ndarray of shape (n_samples, d_out)

    Returns
    -------
    loss : float
    grads : Gradients
        dC/dw1, dC/db1, dC/dw2, dC/db2, each of its parameter's shape.
    a2 : ndarray of shape (n_samples, d_out)
        The network's outputs.
    """
    w1, b1, w2, b2, data = _check_network(w1, b1, w2, b2, data)
    targets = _as_float("targets", targets)
    if targets.shape != (len(data), w2.shape[1]):
        raise ValueError(
            f"targets must have shape ({len(data)}, {w2.shape[1]}), got {targets.shape}"
        )

    a1, a2 = _forward(w1, b1, w2, b2, data, "sigmoid", "sigmoid")
    loss = float(np.mean(np.square(a2 - targets)))

    da2 = 2 * (a2 - targets) / a2.size  # dC/dA2; a2.size = N d_out
    dz2 = da2 * a2 * (1 - a2)  # dC/dZ2 = dC/dA2 σ'(Z2)
    return loss, _backward(w2, data, a1, dz2, "sigmoid"), a2


def gradients_cross_entropy(
    w1: Any,
    b1: Any,
    w2: Any,
    b2: Any,
    data: Any,
    labels: Any,
    *,
    activation: str = "sigmoid",
) -> tuple[float, Gradients, np.ndarray]:
    """Loss and gradients of the softmax network under cross-entropy.

    The loss is :func:`cross_entropy_loss`, a mean over samples.

    Parameters
    ----------
    w1, b1, w2, b2 : ndarray of shapes (d_in, d_h), (1, d_h), (d_h, d_out), (1, d_out)
    data : ndarray of shape (n_samples, d_in)
    labels : ndarray of integers, shape (n_samples,)
    activation : {"sigmoid", "relu"}, default "sigmoid"

    Returns
    -------
    loss : float
    grads : Gradients
        dC/dw1, dC/db1, dC/dw2, dC/db2, each of its parameter's shape.
    a2 : ndarray of shape (n_samples, d_out)
        Class probabilities.
    """
    w1, b1, w2, b2, data = _check_network(w1, b1, w2, b2, data)
    labels = _check_labels(labels, len(data), w2.shape[1])
    _check_choice("activation", activation, ACTIVATIONS)
    return _cross_entropy_step(w1, b1, w2, b2, data, labels, activation)


def learn_once_mse(
    w1: Any,
    b1: Any,
    w2: Any,
    b2: Any,
    data: Any,
    targets: Any,
    learning_rate: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """One gradient step of the MSE network (sigmoid hidden and output layers).

    Returns the new ``w1, b1, w2, b2`` (the inputs are not modified) and the
    loss before the step.
    """
    learning_rate = _check_positive("learning_rate", learning_rate)
    loss, grads, _ = gradients_mse(w1, b1, w2, b2, data, targets)
    new = [p - learning_rate * g for p, g in zip((w1, b1, w2, b2), grads, strict=True)]
    return (*new, loss)


def learn_once_cross_entropy(
    w1: Any,
    b1: Any,
    w2: Any,
    b2: Any,
    data: Any,
    labels: Any,
    learning_rate: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """One gradient step of the softmax network under cross-entropy.

    The hidden layer is a sigmoid, as in the tutorial.  Returns the new
    ``w1, b1, w2, b2`` (the inputs are not modified) and the loss before the
    step.
    """
    learning_rate = _check_positive("learning_rate", learning_rate)
    loss, grads, _ = gradients_cross_entropy(w1, b1, w2, b2, data, labels)
    new = [p - learning_rate * g for p, g in zip((w1, b1, w2, b2), grads, strict=True)]
    return (*new, loss)


# --------------------------------------------------------------------------- #
# Training                                                                     #
# --------------------------------------------------------------------------- #


@dataclass
class History:
    """Per-epoch metrics of one training run; epoch ``e`` is at index ``e - 1``.

    Training loss and accuracy are averages over the epoch's mini-batches, each
    measured in the forward pass of its own step (so on flipped images when
    flips are on, with weights that change during the epoch); with full-batch
    steps they are those of the weights at the start of the epoch.  Validation
    figures are measured after the epoch's last step.  The validation lists are
    empty when no validation data was given.
    """

    train_loss: list[float] = field(default_factory=list)
    train_accuracy: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    best_epoch: int = 0  # the epoch whose weights were kept (1-based)

    COLUMNS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy")

    def rows(self) -> list[tuple[int, float, float, float, float]]:
        """One ``COLUMNS`` tuple per epoch (validation figures NaN if absent)."""
        n = len(self.train_loss)
        val_loss = self.val_loss or [math.nan] * n
        val_accuracy = self.val_accuracy or [math.nan] * n
        return list(
            zip(
                range(1, n + 1),
                self.train_loss,
                self.train_accuracy,
                val_loss,
                val_accuracy,
                strict=True,
            )
        )


def learning_rate_at(
    learning_rate: float, schedule: str, epoch: int, epochs: int
) -> float:
    """The learning rate of ``epoch`` (1-based) out of ``epochs``.

    ``constant`` keeps it; ``cosine`` multiplies it by
    ``(1 + cos(pi (epoch - 1) / epochs)) / 2``, from 1 at the first epoch down
    towards 0; ``step`` divides it by 10 after half of the epochs and again
    after three quarters.
    """
    _check_choice("schedule", schedule, SCHEDULES)
    if schedule == "cosine":
        return learning_rate * (1 + math.cos(math.pi * (epoch - 1) / epochs)) / 2
    if schedule == "step":
        passed = (epoch > epochs // 2) + (epoch > (3 * epochs) // 4)
        return learning_rate * 0.1**passed
    return learning_rate


def mirror_images(rows: np.ndarray) -> np.ndarray:
    """Mirror image rows (n, 3072) left-right; returns a new array of that shape."""
    images = rows.reshape(-1, *IMAGE_SHAPE)  # (n, channel, y, x), a view
    return np.ascontiguousarray(images[:, :, :, ::-1]).reshape(rows.shape)


def _with_mirror_images(rows: np.ndarray, mirrored: np.ndarray | None) -> np.ndarray:
    """``rows`` (n, d_in), then ``mirrored`` (n, d_in) or, when it is None, the
    mirror images of ``rows`` (image rows), stacked in one new array (2n, d_in).
    """
    n = len(rows)
    stacked = np.empty((2 * n, rows.shape[1]), rows.dtype)
    stacked[:n] = rows
    if mirrored is not None:
        stacked[n:] = mirrored
    else:  # written in place: no temporary copy of the mirror images
        images = rows.reshape(-1, *IMAGE_SHAPE)  # (n, channel, y, x), a view
        stacked[n:].reshape(images.shape)[...] = images[:, :, :, ::-1]
    return stacked


class _BatchDrawer:
    """Gathers the rows of each training step into one buffer reused by every step.

    Rows are taken from ``source`` (n_source, d_in): the training rows and,
    with flips, their mirror images after them, row ``i + n_train`` mirroring
    row ``i``.  Drawing a batch is then one gather of sorted row numbers (the
    loss and gradients of a batch do not depend on the order of its rows, and
    sorted numbers read memory forwards), converted to float32 in a buffer
    when the source is not float32, and scaled there in place when
    ``scaling`` is given.  Each of the ``buffers`` buffers (size + 1, d_in)
    holds ``first_row`` (zeros by default) before the batch: the stack that
    :func:`_cross_entropy_step` takes with ``shift_row``.  Draws into
    different buffers may not run at the same time: they share the scratch
    rows of the gather.
    """

    def __init__(
        self,
        source: np.ndarray,
        n_train: int,
        size: int,
        *,
        first_row: np.ndarray | None = None,
        scaling: tuple[np.ndarray, np.ndarray] | None = None,
        buffers: int = 1,
    ) -> None:
        self.source, self.n_train, self.scaling = source, n_train, scaling
        d_in = source.shape[1]
        self.buffers = [np.zeros((size + 1, d_in), np.float32) for _ in range(buffers)]
        if first_row is not None:
            for stacked in self.buffers:
                stacked[0] = first_row
        # Scratch rows that a source of another dtype than float32 is gathered
        # into before its conversion into a buffer (float32 rows are gathered
        # straight into the buffer).
        self.gathered = (
            None if source.dtype == np.float32 else np.empty((size, d_in), source.dtype)
        )

    def draw(
        self, rows: np.ndarray, mirrored: np.ndarray | None, buffer: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        """The batch of training ``rows`` (b,), those at ``mirrored`` (b,) flipped.

        Returns the first row and the batch, stacked (b + 1, d_in), float32: a
        view of buffer number ``buffer``, which the next draw into it
        overwrites; and the training row of each row of the batch (b,).
        """
        picked = rows if mirrored is None else rows + self.n_train * mirrored
        picked = np.sort(picked)
        b = len(picked)
        stacked = self.buffers[buffer]
        x = stacked[1 : b + 1]
        # mode="clip" (every row number is valid) spares numpy a buffered copy.
        into = x if self.gathered is None else self.gathered[:b]
        gathered = np.take(self.source, picked, axis=0, out=into, mode="clip")
        if gathered is not x:
            np.copyto(x, gathered)  # to float32
        if self.scaling is not None:
            shift, scale = self.scaling
            x -= shift
            x *= scale
        return stacked[: b + 1], picked if mirrored is None else picked % self.n_train


class _DrawAhead:
    """Draws the batches of an epoch on a second thread, AHEAD steps early.

    The batch of step ``s`` is drawn into the drawer's buffer ``s % AHEAD``:
    for the first AHEAD steps when the epoch starts, later once the step
    AHEAD steps before it has released that buffer (:meth:`release`, after
    its backward pass has read its batch for the last time).  The pool's one
    thread draws the batches in order, one at a time.
    """

    def __init__(self, drawer: _BatchDrawer, pool: ThreadPoolExecutor) -> None:
        self.drawer, self.pool = drawer, pool
        self.batches: list[np.ndarray] = []
        self.flips: list[np.ndarray | None] = []
        self.pending: deque[Future] = deque()

    def start(self, batches: list[np.ndarray], flips: list[np.ndarray | None]) -> None:
        """Start the draws of a new epoch's ``batches`` and ``flips``."""
        self.batches, self.flips = batches, flips
        for step in range(AHEAD):
            self._submit(step)

    def take(self) -> tuple[np.ndarray, np.ndarray]:
        """The next step's batch, as :meth:`_BatchDrawer.draw` returns it."""
        return self.pending.popleft().result()

    def release(self, step: int) -> None:
        """Step ``step`` no longer reads its batch: draw into its buffer."""
        self._submit(step + AHEAD)

    def _submit(self, step: int) -> None:
        if step < len(self.batches):
            self.pending.append(
                self.pool.submit(
                    self.drawer.draw,
                    self.batches[step],
                    self.flips[step],
                    step % AHEAD,
                )
            )


class _FoldedScaling:
    """The input scaling folded into the first layer, for training on raw rows.

    On scaled rows the first layer computes
    ``((x - shift) * scale) @ w1 + b1 = x @ w1r + (b1 - shift @ w1r)``, where
    ``w1r = scale[:, None] * w1``: training on raw rows keeps ``w1r`` and the
    velocity of w1 multiplied by ``scale`` row by row, and never scales a
    batch.  The gradient on raw rows of the weights ``w1r``, taken as
    ``(x - shift).T @ dz1`` by :func:`_backward` with a shift row, times
    ``scale**2`` is ``scale[:, None]`` times the gradient of w1 on scaled rows,
    so that each momentum step on ``w1r`` is the step on w1 (the weight-decay
    term ``decay * w1r`` is ``scale[:, None]`` times ``decay * w1`` too).
    :func:`train_mlp` multiplies the gradients by ``scale**2`` and the learning
    rate in one pass.  ``docs/backprop.md`` derives it.
    """

    # In float32, x @ w1r - shift @ w1r cancels about log2(|shift * scale|) bits
    # of each term: fold only while no |shift * scale| exceeds this (pixels of
    # CIFAR-10, standardised, stay below 3).
    LIMIT = 100.0

    def __init__(self, shift: np.ndarray, scale: np.ndarray) -> None:
        self.shift = shift
        self.scale = scale[:, np.newaxis]  # (d_in, 1)
        self.scale_squared = np.square(self.scale)

    @classmethod
    def accurate(cls, shift: np.ndarray, scale: np.ndarray) -> bool:
        return bool(np.max(np.abs(shift * scale), initial=0.0) <= cls.LIMIT)

    def to_raw(self, w1: np.ndarray) -> np.ndarray:
        return w1 * self.scale

    def to_scaled(self, w1_raw: np.ndarray) -> np.ndarray:
        return w1_raw / self.scale


def _evaluate(
    params: list[np.ndarray],
    data: np.ndarray,
    labels: np.ndarray,
    activation: str,
    scaling: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[float, float]:
    """Loss and accuracy of the network ``params`` on checked arrays.

    With ``scaling = (shift, scale)``, ``data`` is raw and scaled a chunk at a
    time.
    """
    loss_sum = correct = 0.0
    for start in range(0, len(data), EVAL_ROWS):
        rows = slice(start, start + EVAL_ROWS)
        x = data[rows] if scaling is None else apply_scaling(data[rows], *scaling)
        _, a2 = _forward(*params, x, activation, "softmax")
        loss_sum += len(a2) * _cross_entropy(a2, labels[rows])
        correct += np.count_nonzero(np.argmax(a2, axis=1) == labels[rows])
    return loss_sum / len(data), correct / len(data)


def _check_finite(
    epoch: int, loss: float, params: list[np.ndarray], learning_rate: float
) -> None:
    if math.isfinite(loss) and all(np.isfinite(p).all() for p in params):
        return
    what = (
        f"the loss became {loss}"
        if not math.isfinite(loss)
        else "a weight became NaN or infinite"
    )
    raise TrainingDivergedError(
        f"training diverged in epoch {epoch}: {what}; try a smaller "
        f"learning_rate (this run started at {learning_rate:g})"
    )


def train_mlp(
    w1: Any,
    b1: Any,
    w2: Any,
    b2: Any,
    data_train: Any,
    labels_train: Any,
    learning_rate: float,
    num_epoch: int,
    *,
    activation: str = "sigmoid",
    batch_size: int = 0,
    momentum: float = 0.0,
    schedule: str = "constant",
    weight_decay: float = 0.0,
    flip: bool = False,
    data_train_flipped: Any = None,
    input_shift: Any = None,
    input_scale: Any = None,
    seed: int = 0,
    data_val: Any = None,
    labels_val: Any = None,
    on_epoch: EpochCallback | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, History]:
    """Train the softmax network under cross-entropy for ``num_epoch`` epochs.

    With the defaults this is the tutorial's training: each epoch is one
    gradient step on the whole training set (:func:`learn_once_cross_entropy`
    with a sigmoid hidden layer).

    Parameters
    ----------
    w1, b1, w2, b2 : ndarray of shapes (d_in, d_h), (1, d_h), (d_h, d_out), (1, d_out)
        Initial weights; not modified.
    data_train : ndarray of shape (n_train, d_in)
        Scaled rows, or raw ones with ``input_shift`` and ``input_scale``.
    labels_train : ndarray of integers, shape (n_train,)
    learning_rate : float
        Step size of the first epoch, > 0.
    num_epoch : int
        Passes over the training data, >= 1.
    activation : {"sigmoid", "relu"}, default "sigmoid"
    batch_size : int, default 0
        Samples per step, in an order reshuffled every epoch; the last step of
        an epoch takes what is left.  0 (or >= n_train) is one full-batch step
        per epoch, in data order.
    momentum : float, default 0
        Heavy-ball momentum in [0, 1): ``v <- momentum v + g``, ``w <- w - lr v``.
    schedule : {"constant", "cosine", "step"}, default "constant"
        See :func:`learning_rate_at`; the rate changes between epochs.
    weight_decay : float, default 0
        ``weight_decay * w`` is added to the gradient of ``w1`` and ``w2`` (not
        the biases): the gradient of the L2 penalty ``weight_decay / 2 ||w||^2``.
        The losses reported do not include the penalty.
    flip : bool, default False
        At every step, replace each row of the batch by its mirror image with
        probability 1/2 (horizontal flips).
    data_train_flipped : ndarray of shape (n_train, d_in), optional
        The mirror image of every row of ``data_train``, prepared (scaled,
        projected) as ``data_train`` was.  Without it, ``flip`` needs rows that
        are 3 x 32 x 32 images, and mirrors the rows drawn in each batch.
    input_shift, input_scale : ndarray of shape (d_in,), optional
        Given together, ``data_train``, ``data_train_flipped`` and ``data_val``
        hold raw rows of any real dtype (uint8 pixels, say) that the network
        sees as ``(x - input_shift) * input_scale``: uint8 training data then
        takes a quarter of the memory, and a quarter of the memory traffic, of
        a float32 copy.  Mini-batches are converted to float32 as they are
        drawn, and the scaling is folded into the first layer
        (:class:`_FoldedScaling`) instead of being applied to every batch;
        validation rows are scaled a chunk at a time.
    seed : int, default 0
        Seed of the batch order and of the flips (the ``TRAINING`` stream).
    data_val, labels_val : ndarray of shapes (n_val, d_in) and (n_val,), optional
        Scored after every epoch.  When given, the weights returned are those
        of the epoch of highest validation accuracy (the first such epoch on a
        tie), else those of the last epoch.
    on_epoch : callable, optional
        Called after every epoch as ``on_epoch(epoch, metrics)`` with ``epoch``
        from 1 and ``metrics`` the keys of :attr:`History.COLUMNS` after
        ``epoch`` (validation keys only with validation data) and
        ``learning_rate``.

    Returns
    -------
    w1, b1, w2, b2 : ndarray, float32
        The trained weights.
    history : History
        Per-epoch losses and accuracies and the epoch kept.

    Raises
    ------
    TrainingDivergedError
        When the loss or a weight becomes NaN or infinite; the message names
        the epoch.
    """
    # Checks, then float32 copies that are updated in place.
    raw = input_shift is not None or input_scale is not None
    w1, b1, w2, b2, data_train = _check_network(
        w1, b1, w2, b2, data_train, float_data=not raw
    )
    n_train, d_out = len(data_train), w2.shape[1]
    if n_train == 0:
        raise ValueError("data_train has no rows")
    labels_train = _check_labels(labels_train, n_train, d_out)
    _check_finite_data("data_train", data_train)
    learning_rate = _check_positive("learning_rate", learning_rate)
    _check_number("num_epoch", num_epoch, low=1, integer=True)
    _check_choice("activation", activation, ACTIVATIONS)
    _check_number("batch_size", batch_size, low=0, integer=True)
    _check_number("momentum", momentum, low=0, high=1)
    _check_choice("schedule", schedule, SCHEDULES)
    _check_number("weight_decay", weight_decay, low=0)
    _check_number("seed", seed, low=0, integer=True)
    if flip and data_train_flipped is not None:
        data_train_flipped = np.asarray(data_train_flipped)
        if data_train_flipped.shape != data_train.shape:
            raise ValueError(
                f"data_train has shape {data_train.shape} and data_train_flipped "
                f"{data_train_flipped.shape}: expected equal shapes"
            )
        _check_finite_data("data_train_flipped", data_train_flipped)
    elif flip and data_train.shape[1] != IMAGE_SIZE:
        raise ValueError(
            f"flip needs image rows of {IMAGE_SIZE} values (3 x 32 x 32) or "
            f"data_train_flipped, got data of shape {data_train.shape}"
        )
    scaling = None
    if raw:
        scaling = tuple(
            _as_float(name, v).astype(np.float32)
            for name, v in (("input_shift", input_shift), ("input_scale", input_scale))
        )
        if any(v.shape != (data_train.shape[1],) for v in scaling):
            raise ValueError(
                f"input_shift and input_scale must have shape "
                f"({data_train.shape[1]},), got {scaling[0].shape} and "
                f"{scaling[1].shape}"
            )
    validating = data_val is not None or labels_val is not None
    if validating:
        *_, data_val = _check_network(w1, b1, w2, b2, data_val, float_data=not raw)
        if len(data_val) == 0:
            raise ValueError("data_val has no rows")
        labels_val = _check_labels(labels_val, len(data_val), d_out)
        _check_finite_data("data_val", data_val)
        if not raw:
            data_val = data_val.astype(np.float32, copy=False)
    full_batch = batch_size == 0 or batch_size >= n_train
    if raw and full_batch:  # every step reads all rows: scale them once
        data_train = apply_scaling(data_train, *scaling)
        if data_train_flipped is not None:
            data_train_flipped = apply_scaling(data_train_flipped, *scaling)
    elif not raw:
        data_train = data_train.astype(np.float32, copy=False)
        if data_train_flipped is not None:
            data_train_flipped = data_train_flipped.astype(np.float32, copy=False)
    # The weights, their steps and a step's gradients: each a flat float32
    # array and views of it shaped as w1, b1, w2, b2, so that a momentum step
    # is a few whole-array operations and a step's products write their
    # gradients in place.
    shapes = [np.shape(p) for p in (w1, b1, w2, b2)]
    flat, params = _packed(shapes)
    for p, initial in zip(params, (w1, b1, w2, b2), strict=True):
        p[...] = initial
    steps_flat, steps = _packed(shapes)
    grads_flat, grads = _packed(shapes)
    grads = Gradients(*grads)

    # Raw mini-batches: fold the scaling into the first layer when that is
    # accurate in float32, else scale each batch as it is drawn.
    folded = batch_scaling = None
    if raw and not full_batch:
        if _FoldedScaling.accurate(*scaling):
            folded = _FoldedScaling(*scaling)
            params[0][...] = folded.to_raw(params[0])
        else:
            batch_scaling = scaling
    size = n_train if full_batch else batch_size
    drawer = None
    if flip or not full_batch:
        source = data_train
        if flip:
            source = _with_mirror_images(data_train, data_train_flipped)
            del data_train_flipped
        drawer = _BatchDrawer(
            source,
            n_train,
            size,
            first_row=None if folded is None else -folded.shift,
            scaling=batch_scaling,
            buffers=1 if full_batch else AHEAD,
        )
    best = [p.copy() for p in params]
    decayed = (0, 2) if weight_decay else ()  # w1 and w2; not the biases
    # What multiplies a step's gradients: the learning rate, and with the
    # folded scaling, scale**2 on w1's rows as well (one array, set each epoch).
    gradient_scale = scale_views = None
    if folded is not None:
        gradient_scale, scale_views = _packed(shapes)
    lr = 0.0

    rng = np.random.default_rng([seed, TRAINING])
    history = History()
    best_accuracy = -1.0

    # Overflow and invalid values are let through: divergence is checked below.
    with np.errstate(over="ignore", invalid="ignore"), ExitStack() as stack:
        # With more than one step an epoch, a second thread draws the batches
        # AHEAD steps in advance, each into the drawer's buffer that the step
        # AHEAD steps before it has read for the last time (in its backward
        # pass): a draw is work on one core, and it overlaps the steps before
        # its batch.
        prefetch = None
        if not full_batch:  # mini-batches always have a drawer
            pool = stack.enter_context(ThreadPoolExecutor(max_workers=1))
            prefetch = _DrawAhead(drawer, pool)
        for epoch in range(1, num_epoch + 1):
            previous_lr = lr
            lr = learning_rate_at(learning_rate, schedule, epoch, num_epoch)
            if epoch > 1 and lr != previous_lr:
                steps_flat *= lr / previous_lr  # a step is lr times a velocity
            if gradient_scale is not None:
                gradient_scale.fill(lr)
                np.multiply(folded.scale_squared, lr, out=scale_views[0])
            order = np.arange(n_train) if full_batch else rng.permutation(n_train)
            epoch_loss = epoch_correct = 0.0

            batches = [order[start : start + size] for start in range(0, n_train, size)]
            flips = [rng.random(len(rows)) < 0.5 if flip else None for rows in batches]
            if prefetch is not None:
                prefetch.start(batches, flips)
            for step, rows in enumerate(batches):
                if drawer is None:
                    x = data_train  # one full-batch step, no flips: no copy
                else:
                    if prefetch is None:
                        x, rows = drawer.draw(rows, flips[step])
                    else:
                        x, rows = prefetch.take()
                    x = x if folded else x[1:]
                y = labels_train[rows]

                loss, _, a2 = _cross_entropy_step(
                    *params, x, y, activation, folded is not None, grads
                )
                if prefetch is not None:  # x is not read again: draw into it
                    prefetch.release(step)
                _check_finite(epoch, loss, [], learning_rate)

                # The momentum step in place (docs/backprop.md):
                # v <- momentum v + g + weight_decay w and w <- w - lr v, with
                # the step u = lr v kept instead of v, which spares a pass over
                # the weights: u <- momentum u + lr (g + weight_decay w),
                # w <- w - u.  The gradients serve as scratch space once the
                # step has them.
                grads_flat *= lr if gradient_scale is None else gradient_scale
                steps_flat *= momentum
                steps_flat += grads_flat
                for i in decayed:
                    steps[i] += np.multiply(params[i], lr * weight_decay, out=grads[i])
                flat -= steps_flat

                epoch_loss += loss * len(rows)
                epoch_correct += np.count_nonzero(np.argmax(a2, axis=1) == y)

            _check_finite(epoch, epoch_loss, params, learning_rate)
            scaled = params  # the weights for scaled rows
            if folded is not None:
                scaled = [folded.to_scaled(params[0]), *params[1:]]
            metrics = {
                "train_loss": epoch_loss / n_train,
                "train_accuracy": epoch_correct / n_train,
            }
            if validating:
                val_loss, val_accuracy = _evaluate(
                    scaled, data_val, labels_val, activation, scaling
                )
                metrics |= {"val_loss": val_loss, "val_accuracy": val_accuracy}
                if val_accuracy > best_accuracy:
                    best_accuracy, history.best_epoch = val_accuracy, epoch
                    for kept, p in zip(best, scaled, strict=True):
                        np.copyto(kept, p)
            for name, value in metrics.items():
                getattr(history, name).append(value)
            if on_epoch is not None:
                on_epoch(epoch, metrics | {"learning_rate": lr})

    if not validating:
        history.best_epoch, best = num_epoch, [p.copy() for p in scaled]
    return (*best, history)


def _packed(shapes: list[tuple[int, ...]]) -> tuple[np.ndarray, list[np.ndarray]]:
    """A flat float32 array of zeros, and views of it shaped as ``shapes``, in turn."""
    sizes = [math.prod(shape) for shape in shapes]
    flat = np.zeros(sum(sizes), np.float32)
    views, start = [], 0
    for shape, size in zip(shapes, sizes, strict=True):
        views.append(flat[start : start + size].reshape(shape))
        start += size
    return flat, views


def test_mlp(
    w1: Any,
    b1: Any,
    w2: Any,
    b2: Any,
    data_test: Any,
    labels_test: Any,
    *,
    activation: str = "sigmoid",
) -> float:
    """Accuracy of the softmax network on ``data_test``, in [0, 1].

    Parameters
    ----------
    w1, b1, w2, b2 : ndarray of shapes (d_in, d_h), (1, d_h), (d_h, d_out), (1, d_out)
    data_test : ndarray of shape (n_test, d_in)
    labels_test : ndarray of integers, shape (n_test,)
    activation : {"sigmoid", "relu"}, default "sigmoid"
    """
    w1, b1, w2, b2, data_test = _check_network(w1, b1, w2, b2, data_test)
    labels_test = _check_labels(labels_test, len(data_test), w2.shape[1])
    _check_choice("activation", activation, ACTIVATIONS)
    if len(data_test) == 0:
        raise ValueError("data_test has no rows")
    return _evaluate([w1, b1, w2, b2], data_test, labels_test, activation)[1]


def init_weights(
    d_in: int, d_h: int, d_out: int, *, init: str, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Random weights and zero biases, float32.

    ``normal`` draws every weight from N(0, 1) (the tutorial's choice: with
    unscaled pixels it saturates a sigmoid layer from the first step);
    ``xavier`` from N(0, 2 / (fan_in + fan_out)); ``he`` from N(0, 2 / fan_in).
    The draws come from the ``INIT`` stream of ``seed``.

    Returns
    -------
    w1, b1, w2, b2 : ndarray of shapes (d_in, d_h), (1, d_h), (d_h, d_out), (1, d_out)
    """
    for name, value in (("d_in", d_in), ("d_h", d_h), ("d_out", d_out)):
        _check_number(name, value, low=1, integer=True)
    _check_choice("init", init, INITS)
    rng = np.random.default_rng([seed, INIT])

    def draw(fan_in: int, fan_out: int) -> np.ndarray:
        std = {
            "normal": 1.0,
            "xavier": math.sqrt(2 / (fan_in + fan_out)),
            "he": math.sqrt(2 / fan_in),
        }[init]
        return (std * rng.standard_normal((fan_in, fan_out))).astype(np.float32)

    w1, w2 = draw(d_in, d_h), draw(d_h, d_out)
    return w1, np.zeros((1, d_h), np.float32), w2, np.zeros((1, d_out), np.float32)


def run_mlp_training(
    data_train: Any,
    labels_train: Any,
    data_test: Any,
    labels_test: Any,
    d_h: int,
    learning_rate: float,
    num_epoch: int,
    *,
    seed: int = 0,
) -> tuple[list[float], float]:
    """The tutorial's experiment: train on one split, score on the other.

    Standard-normal weights, zero biases, a sigmoid hidden layer of ``d_h``
    units, one full-batch step per epoch, no input scaling.

    Returns
    -------
    train_accuracies : list of float
        Training accuracy of every epoch (see :class:`History`).
    test_accuracy : float
        Accuracy of the final weights on ``data_test``.
    """
    data_train = _as_float("data_train", data_train)
    if data_train.ndim != 2:
        raise ValueError(f"data_train must be 2-D, got shape {data_train.shape}")
    w1, b1, w2, b2 = init_weights(
        data_train.shape[1], d_h, N_CLASSES, init="normal", seed=seed
    )
    *weights, history = train_mlp(
        w1, b1, w2, b2, data_train, labels_train, learning_rate, num_epoch
    )
    return history.train_accuracy, test_mlp(*weights, data_test, labels_test)


# --------------------------------------------------------------------------- #
# The pipeline's model                                                         #
# --------------------------------------------------------------------------- #


def split_validation(
    n_samples: int, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Cut ``round(fraction n_samples)`` random rows (at least 1) for validation.

    The rows are drawn from the ``HOLD_OUT`` stream of ``seed``, so the same
    ``mlp.seed`` always holds out the same rows of a training split.

    Returns
    -------
    train_rows, val_rows : ndarray of int64
        Disjoint, each sorted, together ``0 .. n_samples - 1``.
    """
    _check_number("n_samples", n_samples, low=2, integer=True)
    _check_number("validation_fraction", fraction, low=0, high=1)
    n_val = min(max(1, round(fraction * n_samples)), n_samples - 1)
    picked = np.random.default_rng([seed, HOLD_OUT]).permutation(n_samples)
    return np.sort(picked[n_val:]), np.sort(picked[:n_val])


def fit_scaling(
    images: np.ndarray, scaling: str, *, mirrored: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature ``shift`` and ``scale`` so that ``(x - shift) * scale`` is scaled.

    ``none`` is shift 0, scale 1; ``divide255`` is shift 0, scale 1/255;
    ``standardize`` is the mean and 1/std of each feature over ``images`` (a
    feature of std 0 keeps scale 1).  With ``mirrored`` (for flips), the
    statistics are those of ``images`` together with their mirror images, which
    makes flipping and scaling commute.

    The statistics take two passes over ``images``, a chunk of rows at a time:
    the means (summed in float64), then the squares of the deviations from
    them (float32 within a chunk of :data:`EVAL_ROWS` rows, float64 across
    chunks), which avoids the cancellation of ``E[x^2] - E[x]^2``.

    Parameters
    ----------
    images : ndarray of shape (n_samples, d_in)
        The training part only; uint8 or float.
    scaling : {"none", "divide255", "standardize"}

    Returns
    -------
    shift, scale : ndarray of shape (d_in,), float32
    """
    _check_choice("scaling", scaling, SCALINGS)
    d_in = images.shape[1]
    shift = np.zeros(d_in, np.float64)
    scale = np.full(d_in, 1 / 255 if scaling == "divide255" else 1.0)
    if scaling == "standardize":
        chunks = [slice(i, i + EVAL_ROWS) for i in range(0, len(images), EVAL_ROWS)]
        mean = sum(images[c].sum(axis=0, dtype=np.float64) for c in chunks)
        mean /= len(images)
        mean32, squares = mean.astype(np.float32), np.zeros(d_in)
        for c in chunks:
            deviation = images[c] - mean32  # (rows, d_in), float32
            squares += np.einsum("ij,ij->j", deviation, deviation)
        variance = squares / len(images)
        if mirrored:
            # Of the images and their mirrors, half and half: for each pixel p
            # and its mirror p', the mean (m + m')/2 and the variance
            # (v + v')/2 + ((m - m')/2)^2.
            mirror = mirror_images(mean[np.newaxis])[0]
            variance = (variance + mirror_images(variance[np.newaxis])[0]) / 2
            variance += ((mean - mirror) / 2) ** 2
            mean = (mean + mirror) / 2
        std = np.sqrt(variance)
        shift = mean
        scale = np.divide(1, std, out=np.ones(d_in), where=std > 1e-6 * (1 + abs(mean)))
    return shift.astype(np.float32), scale.astype(np.float32)


def fit_pca(data: np.ndarray, components: int) -> np.ndarray:
    """Projection onto the leading principal components, partially whitened.

    The covariance matrix of ``data`` is estimated from at most
    :data:`PCA_ROWS` rows (every ``ceil(n / PCA_ROWS)``-th row: the split is
    already in random order) and its eigenvectors ``v_j`` with the largest
    eigenvalues ``l_j`` are kept (from the SVD of the centred rows when there
    are fewer rows than features).  Component ``j`` is divided by
    ``sqrt(l_j + l_mean)``, ``l_mean`` the mean of all eigenvalues: components
    of large variance come out with variance near 1, those far below the mean
    are damped instead of blown up (full whitening amplifies the noise of the
    smallest components, and the network then fits it).  The whole projection
    is then divided by one constant so that the projected training rows have
    a mean variance of 1.

    Parameters
    ----------
    data : ndarray of shape (n_samples, d_in)
        The (scaled) training part only.
    components : int
        ``1 <= components <= d_in``.

    Returns
    -------
    projection : ndarray of shape (d_in, components), float32
        ``data @ projection`` are the projected rows.
    """
    if not 1 <= components <= min(data.shape):
        raise ValueError(
            f"pca_components must be in 1..{min(data.shape)} for data of shape "
            f"{data.shape}, got {components}"
        )
    step = -(-len(data) // PCA_ROWS)
    rows = data[::step].astype(np.float32)
    rows -= rows.mean(axis=0)
    n_rows, d_in = rows.shape

    if n_rows >= d_in:
        covariance = rows.T @ rows  # (d_in, d_in)
        eigenvalues, eigenvectors = np.linalg.eigh(covariance)  # ascending
        eigenvalues = eigenvalues[::-1].astype(np.float64) / n_rows
        vectors = eigenvectors[:, ::-1][:, :components]
    else:  # fewer rows than features: the SVD of the rows is cheaper
        _, singular, vt = np.linalg.svd(rows, full_matrices=False)
        eigenvalues = singular.astype(np.float64) ** 2 / n_rows
        vectors = vt[:components].T
    del rows

    damping = eigenvalues.sum() / d_in  # the mean of all d_in eigenvalues
    eigenvalues = np.maximum(eigenvalues[:components], 0)  # rounding can give -0.1
    variance = eigenvalues / (eigenvalues + damping)  # of each projected component
    factors = 1 / np.sqrt((eigenvalues + damping) * variance.mean())
    return (vectors * factors).astype(np.float32)


def apply_scaling(
    images: np.ndarray, shift: np.ndarray, scale: np.ndarray
) -> np.ndarray:
    """Return ``(images - shift) * scale`` as a new float32 array (n, d_in)."""
    out = np.subtract(images, shift, dtype=np.float32)
    out *= scale
    return out


@dataclass(frozen=True)
class MLPModel:
    """A trained network and the input scaling it was trained with.

    Attributes
    ----------
    w1, b1, w2, b2 : ndarray of shapes (d_in, d_h), (1, d_h), (d_h, 10), (1, 10)
    activation : str
        Of the hidden layer.
    shift, scale : ndarray of shape (d_in,)
        Raw inputs ``x`` are fed to the network as ``(x - shift) * scale``.
    validation_rows : ndarray of int64
        Rows of the training split that were held out for validation.
    best_epoch : int
        The epoch whose weights these are.
    """

    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: np.ndarray
    activation: str
    shift: np.ndarray
    scale: np.ndarray
    validation_rows: np.ndarray
    best_epoch: int

    def predict_proba(self, images: Any) -> np.ndarray:
        """Class probabilities, (n, 10) float32, for raw ``images`` (n, d_in)."""
        images = np.asarray(images)
        if images.ndim != 2 or images.shape[1] != len(self.shift):
            raise ValueError(
                f"images must have shape (n, {len(self.shift)}), got {images.shape}"
            )
        out = np.empty((len(images), self.w2.shape[1]), np.float32)
        weights = (self.w1, self.b1, self.w2, self.b2)
        for start in range(0, len(images), EVAL_ROWS):
            x = apply_scaling(images[start : start + EVAL_ROWS], self.shift, self.scale)
            out[start : start + len(x)] = _forward(
                *weights, x, self.activation, "softmax"
            )[1]
        return out

    def accuracy(self, images: Any, labels: Any) -> float:
        """Share of ``images`` (n, d_in) classified as their ``labels`` (n,)."""
        labels = _check_labels(labels, len(images), self.w2.shape[1])
        if len(labels) == 0:
            raise ValueError("images has no rows")
        return float(np.mean(self.predict_proba(images).argmax(axis=1) == labels))

    def save(self, path: str | os.PathLike) -> None:
        """Write the model as one ``.npz`` file, atomically."""
        arrays = {name: getattr(self, name) for name in _MODEL_ARRAYS}
        arrays["activation"] = np.array(self.activation)
        arrays["best_epoch"] = np.array(self.best_epoch, np.int64)
        with atomic_path(path) as tmp, tmp.open("wb") as f:
            np.savez(f, **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> MLPModel:
        """Read a model written by :meth:`save`; a bad file raises PipelineError."""
        try:
            with np.load(path, allow_pickle=False) as npz:
                found = {name: npz[name] for name in npz.files}
        except OSError as exc:
            raise PipelineError(f"{path}: cannot read: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise PipelineError(f"{path}: not a readable .npz file ({exc})") from None
        missing = [
            n for n in (*_MODEL_ARRAYS, "activation", "best_epoch") if n not in found
        ]
        if missing:
            raise PipelineError(f"{path}: missing arrays {', '.join(missing)}")

        activation = str(found["activation"])
        arrays = {name: found[name] for name in _MODEL_ARRAYS}
        try:
            _check_choice("activation", activation, ACTIVATIONS)
            _check_network(
                *(arrays[n] for n in ("w1", "b1", "w2", "b2")), arrays["shift"][None]
            )
            if arrays["scale"].shape != arrays["shift"].shape:
                raise ValueError(
                    f"shift has shape {arrays['shift'].shape} and scale "
                    f"{arrays['scale'].shape}: expected equal shapes"
                )
        except ValueError as exc:
            raise PipelineError(f"{path}: {exc}") from None
        return cls(**arrays, activation=activation, best_epoch=int(found["best_epoch"]))


_MODEL_ARRAYS = ("w1", "b1", "w2", "b2", "shift", "scale", "validation_rows")


def fit_mlp(
    images: Any,
    labels: Any,
    *,
    hidden_units: int,
    activation: str,
    init: str,
    scaling: str,
    batch_size: int,
    epochs: int,
    learning_rate: float,
    momentum: float,
    schedule: str,
    weight_decay: float,
    validation_fraction: float,
    flip: bool,
    seed: int,
    pca_components: int = 0,
    on_epoch: EpochCallback | None = None,
) -> tuple[MLPModel, History]:
    """Train a network on a training split as the ``mlp`` params describe it.

    Steps: hold out ``validation_fraction`` of the rows (seeded by ``seed``);
    fit the input scaling on the remaining training part only; with
    ``pca_components`` > 0, project the scaled rows onto their leading
    principal components (:func:`fit_pca`, again on the training part only);
    initialise the weights; train with :func:`train_mlp`, keeping the weights
    of the epoch of best validation accuracy.  The keywords are those of the
    ``mlp`` section of ``params.yaml``; see its reference for their meaning.

    The projection is linear, so it is folded into the first layer of the
    model returned (``w1 = projection @ w1``): the model takes scaled pixels,
    whatever ``pca_components`` was.

    Parameters
    ----------
    images : ndarray of shape (n_samples, d_in)
        Raw training split, e.g. uint8 pixels (n_samples, 3072).
    labels : ndarray of integers, shape (n_samples,)
        Class indices in 0..9.
    on_epoch : callable, optional
        Passed to :func:`train_mlp`.

    Returns
    -------
    model : MLPModel
    history : History

    Notes
    -----
    Memory: without PCA the training part is copied in the dtype of
    ``images`` (0.15 GB for 48,600 uint8 CIFAR-10 images), and with ``flip``
    :func:`train_mlp` stacks it with its mirror images (0.3 GB more); batches
    are converted to float32 as they are drawn.  With ``pca_components`` it
    is scaled once into a float32 array (0.6 GB) for the covariance and the
    projection, and with ``flip`` a mirrored float32 copy exists while it is
    projected, so the peak is about 1.2 GB besides ``images``; the projected
    rows take ``pca_components / d_in`` of that (twice, with their mirror
    images).
    """
    images = np.asarray(images)
    if images.ndim != 2 or images.dtype.kind not in "fiu" or len(images) < 2:
        raise ValueError(
            "images must be a 2-D array of numbers with at least 2 rows, got shape "
            f"{images.shape} and dtype {images.dtype}"
        )
    labels = _check_labels(labels, len(images), N_CLASSES)
    _check_number("hidden_units", hidden_units, low=1, integer=True)
    _check_choice("init", init, INITS)
    _check_choice("scaling", scaling, SCALINGS)
    _check_number("epochs", epochs, low=1, integer=True)
    _check_number("seed", seed, low=0, integer=True)
    _check_number(
        "pca_components", pca_components, low=0, high=images.shape[1] + 1, integer=True
    )
    if flip and images.shape[1] != IMAGE_SIZE:
        raise ValueError(
            f"flip needs image rows of {IMAGE_SIZE} values (3 x 32 x 32), got "
            f"images of shape {images.shape}"
        )

    # Hold-out, then everything fitted from data is fitted on the training part.
    train_rows, val_rows = split_validation(len(images), validation_fraction, seed)
    x_train, x_val = images[train_rows], images[val_rows]  # raw, e.g. uint8
    shift, scale = fit_scaling(x_train, scaling, mirrored=flip)
    input_scaling = {"input_shift": shift, "input_scale": scale}
    x_flipped = None  # train_mlp mirrors raw pixel rows itself, batch by batch
    if pca_components:
        # Projected rows are small (k values each): prepare them all now.
        x_train = apply_scaling(x_train, shift, scale)
        projection = fit_pca(x_train, pca_components)
        if flip:
            x_flipped = mirror_images(x_train) @ projection
        x_train = x_train @ projection
        x_val = apply_scaling(x_val, shift, scale) @ projection
        input_scaling = {}

    weights = init_weights(
        x_train.shape[1], hidden_units, N_CLASSES, init=init, seed=seed
    )
    *weights, history = train_mlp(
        *weights,
        x_train,
        labels[train_rows],
        learning_rate,
        epochs,
        activation=activation,
        batch_size=batch_size,
        momentum=momentum,
        schedule=schedule,
        weight_decay=weight_decay,
        flip=flip,
        data_train_flipped=x_flipped,
        **input_scaling,
        seed=seed,
        data_val=x_val,
        labels_val=labels[val_rows],
        on_epoch=on_epoch,
    )
    if pca_components:
        weights[0] = projection @ weights[0]  # (d_in, k) @ (k, d_h)
    model = MLPModel(
        *weights,
        activation=activation,
        shift=shift,
        scale=scale,
        validation_rows=val_rows,
        best_epoch=history.best_epoch,
    )
    return model, history


def load_split(folder: str | os.PathLike, part: str) -> tuple[np.ndarray, np.ndarray]:
    """Read ``{part}_images.npy`` and ``{part}_labels.npy`` of a prepared folder.

    See :func:`load_inputs`.
    """
    return load_inputs(
        os.path.join(folder, f"{part}_images.npy"),
        os.path.join(folder, f"{part}_labels.npy"),
    )


def load_inputs(
    images_path: str | os.PathLike, labels_path: str | os.PathLike
) -> tuple[np.ndarray, np.ndarray]:
    """Read the inputs of one split (pixels or descriptors) and their labels.

    Returns
    -------
    images : ndarray of shape (n, d_in), as stored (uint8 for pixels, float32
        for descriptors)
    labels : ndarray of shape (n,), int64

    Raises
    ------
    PipelineError
        Naming the file that cannot be read or does not hold what is expected.
    """
    arrays = []
    for path, ndim, kinds in ((images_path, 2, "fiu"), (labels_path, 1, "iu")):
        try:
            array = np.load(path, allow_pickle=False)
        except OSError as exc:
            raise PipelineError(f"{path}: cannot read: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise PipelineError(f"{path}: not a readable .npy file ({exc})") from None
        if array.ndim != ndim or array.dtype.kind not in kinds:
            raise PipelineError(
                f"{path}: expected a {ndim}-D array of dtype kind {kinds!r}, got "
                f"shape {array.shape} and dtype {array.dtype}"
            )
        arrays.append((path, array))

    (images_path, images), (labels_path, labels) = arrays
    if len(labels) != len(images):
        raise PipelineError(
            f"{labels_path} holds {len(labels)} labels for the {len(images)} rows "
            f"of {images_path}"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= N_CLASSES):
        raise PipelineError(
            f"{labels_path}: labels must be in 0..{N_CLASSES - 1}, found "
            f"{labels.min()}..{labels.max()}"
        )
    return images, labels.astype(np.int64, copy=False)
