"""The numpy perceptron: gradients against finite differences, the building
blocks on hand-computed cases, training behaviour, the saved model, and the
links of docs/backprop.md."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import yaml

from cifar_baselines import mlp
from cifar_baselines.errors import PipelineError
from cifar_baselines.params import ParamsError, load_params

REPO = Path(__file__).resolve().parents[1]
PARAM_NAMES = ("w1", "b1", "w2", "b2")


def tiny_network(d_in=5, d_h=4, d_out=3, n=7, seed=0):
    """Random float64 weights, data, labels and one-hot targets."""
    rng = np.random.default_rng(seed)
    params = [
        rng.normal(size=(d_in, d_h)),
        rng.normal(size=(1, d_h)),
        rng.normal(size=(d_h, d_out)),
        rng.normal(size=(1, d_out)),
    ]
    data = rng.normal(size=(n, d_in))
    labels = rng.integers(0, d_out, size=n)
    return params, data, labels, mlp.one_hot(labels, d_out, dtype=np.float64)


def blobs(n=200, d_in=6, n_classes=3, seed=0, spread=0.3):
    """Well separated Gaussian clusters, float32 data and int64 labels."""
    rng = np.random.default_rng(seed)
    centres = 3 * rng.normal(size=(n_classes, d_in))
    labels = rng.integers(0, n_classes, size=n)
    data = centres[labels] + spread * rng.normal(size=(n, d_in))
    return data.astype(np.float32), labels


# --------------------------------------------------------------------------- #
# Gradients against central finite differences, float64                       #
# --------------------------------------------------------------------------- #


def numeric_gradient(loss_of, params, index, eps=1e-6):
    """Central differences of ``loss_of(params)`` w.r.t. ``params[index]``."""
    grad = np.zeros_like(params[index])
    for pos in np.ndindex(grad.shape):
        shifted = [p.copy() for p in params]
        shifted[index][pos] += eps
        up = loss_of(shifted)
        shifted[index][pos] -= 2 * eps
        down = loss_of(shifted)
        grad[pos] = (up - down) / (2 * eps)
    return grad


CASES = {
    "mse": lambda p, x, labels, targets: mlp.gradients_mse(*p, x, targets),
    "cross_entropy_sigmoid": lambda p, x, labels, targets: mlp.gradients_cross_entropy(
        *p, x, labels, activation="sigmoid"
    ),
    "cross_entropy_relu": lambda p, x, labels, targets: mlp.gradients_cross_entropy(
        *p, x, labels, activation="relu"
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("index", range(4), ids=PARAM_NAMES)
def test_gradient_matches_central_differences(case, index):
    params, data, labels, targets = tiny_network()
    gradients = CASES[case]

    def loss_of(p):
        return gradients(p, data, labels, targets)[0]

    analytic = gradients(params, data, labels, targets)[1][index]
    numeric = numeric_gradient(loss_of, params, index)
    assert analytic.shape == params[index].shape
    assert analytic.dtype == np.float64
    error = np.linalg.norm(analytic - numeric) / np.linalg.norm(numeric)
    assert error < 1e-6, f"{case}, d{PARAM_NAMES[index]}: relative error {error:.2e}"


def test_the_losses_returned_are_the_documented_means():
    params, data, labels, targets = tiny_network()

    loss, _, a2 = mlp.gradients_mse(*params, data, targets)
    assert loss == pytest.approx(np.sum((a2 - targets) ** 2) / targets.size)

    loss, _, a2 = mlp.gradients_cross_entropy(*params, data, labels)
    picked = a2[np.arange(len(labels)), labels]
    assert loss == pytest.approx(-np.sum(np.log(picked)) / len(labels))


@pytest.mark.parametrize("learn_once", ["mse", "cross_entropy"])
def test_learn_once_takes_one_gradient_step(learn_once):
    params, data, labels, targets = tiny_network()
    if learn_once == "mse":
        *new, loss = mlp.learn_once_mse(*params, data, targets, 0.5)
        expected_loss, grads, _ = mlp.gradients_mse(*params, data, targets)
    else:
        *new, loss = mlp.learn_once_cross_entropy(*params, data, labels, 0.5)
        expected_loss, grads, _ = mlp.gradients_cross_entropy(*params, data, labels)

    assert loss == expected_loss
    for p, g, updated in zip(params, grads, new, strict=True):
        np.testing.assert_allclose(updated, p - 0.5 * g, rtol=1e-12)


# --------------------------------------------------------------------------- #
# Building blocks on hand-computed cases                                      #
# --------------------------------------------------------------------------- #


def test_sigmoid_known_values_and_extremes():
    out = mlp.sigmoid(np.array([0.0, math.log(3), -1000.0, 1000.0], np.float32))
    np.testing.assert_allclose(out, [0.5, 0.75, 0.0, 1.0], rtol=1e-6)
    assert out.dtype == np.float32


def test_softmax_known_values():
    out = mlp.softmax_stable([[0.0, math.log(3)], [5.0, 5.0]])
    np.testing.assert_allclose(out, [[0.25, 0.75], [0.5, 0.5]])


def test_softmax_is_finite_at_plus_and_minus_1000():
    z = np.array([[1000.0, -1000.0, 0.0], [-1000.0, -1000.0, -1000.0]], np.float32)
    out = mlp.softmax_stable(z)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, [[1, 0, 0], [1 / 3, 1 / 3, 1 / 3]], atol=1e-7)


def test_softmax_wants_rows():
    with pytest.raises(ValueError, match=r"z must be 2-D .* got shape \(3,\)"):
        mlp.softmax_stable([1.0, 2.0, 3.0])


def test_one_hot_of_1d_labels():
    out = mlp.one_hot(np.array([2, 0, 1]), n_classes=3)
    np.testing.assert_array_equal(out, [[0, 0, 1], [1, 0, 0], [0, 1, 0]])
    assert out.dtype == np.float32


def test_one_hot_of_2d_labels_adds_a_last_axis():
    labels = np.array([[0, 3], [3, 1]])
    out = mlp.one_hot(labels, n_classes=4)
    assert out.shape == (2, 2, 4)
    np.testing.assert_array_equal(out.argmax(axis=-1), labels)
    np.testing.assert_array_equal(out.sum(axis=-1), np.ones((2, 2)))


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (np.array([0, 10]), r"labels must be in 0\.\.9, found 0\.\.10"),
        (np.array([-1, 2]), r"labels must be in 0\.\.9, found -1\.\.2"),
        (np.array([0.0, 1.0]), r"labels must be integers, got dtype float64"),
    ],
)
def test_one_hot_refuses_bad_labels(labels, message):
    with pytest.raises(ValueError, match=message):
        mlp.one_hot(labels)


def test_cross_entropy_known_value_and_zero_probability():
    probabilities = np.array([[0.25, 0.75], [0.5, 0.5]])
    expected = -(math.log(0.75) + math.log(0.5)) / 2
    assert mlp.cross_entropy_loss(probabilities, [1, 0]) == pytest.approx(expected)

    zero = np.array([[1.0, 0.0]], np.float32)
    loss = mlp.cross_entropy_loss(zero, [1])
    assert math.isfinite(loss)
    assert loss == pytest.approx(-math.log(np.finfo(np.float32).tiny))


def test_mse_loss_is_a_mean_over_samples_and_outputs():
    assert mlp.mse_loss([[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 2.0]]) == 1.25


def test_shapes_are_checked_with_both_shapes_named():
    params, data, labels, _ = tiny_network()
    with pytest.raises(ValueError, match=r"data has shape \(7, 4\) and w1 has shape"):
        mlp.forward(*params, data[:, :4])
    with pytest.raises(ValueError, match=r"b1 has shape \(4,\) and b2 has shape"):
        mlp.forward(params[0], params[1][0], *params[2:], data)
    with pytest.raises(ValueError, match=r"labels must be integers of shape \(7,\)"):
        mlp.gradients_cross_entropy(*params, data, labels[:3])


def test_per_class_accuracy():
    labels = np.array([0, 0, 1, 1, 1, 2])
    predicted = np.array([0, 1, 1, 1, 0, 0])
    out = mlp.per_class_accuracy(labels, predicted, n_classes=4)
    np.testing.assert_allclose(out, [0.5, 2 / 3, 0.0, np.nan])


# --------------------------------------------------------------------------- #
# Training                                                                    #
# --------------------------------------------------------------------------- #


def test_full_batch_epoch_is_the_tutorial_step():
    data, labels = blobs()
    w = mlp.init_weights(6, 5, 3, init="xavier", seed=1)
    *new, history = mlp.train_mlp(*w, data, labels, 0.3, 1)
    *expected, loss = mlp.learn_once_cross_entropy(*w, data, labels, 0.3)

    for got, want in zip(new, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    assert history.train_loss == [pytest.approx(loss, rel=1e-6)]


def momentum_step(params, velocity, grads, rate, mu, decay):
    """The documented update, in place on the lists: v <- mu v + g + decay w
    (decay on w1 and w2 only), then w <- w - rate v."""
    for i, g in enumerate(grads):
        decayed = g + (decay * params[i] if i in (0, 2) else 0)
        velocity[i] = mu * velocity[i] + decayed
        params[i] = params[i] - rate * velocity[i]


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_momentum_and_weight_decay_follow_the_documented_update(schedule):
    # Full-batch epochs: one step each, so that with the cosine schedule the
    # learning rate changes at every step.
    data, labels = blobs(n=50)
    w = [p.astype(np.float64) for p in mlp.init_weights(6, 5, 3, init="he", seed=2)]
    lr, mu, decay, epochs = 0.2, 0.9, 0.05, 4

    params, velocity = [p.copy() for p in w], [np.zeros_like(p) for p in w]
    for epoch in range(1, epochs + 1):
        rate = mlp.learning_rate_at(lr, schedule, epoch, epochs)
        _, grads, _ = mlp.gradients_cross_entropy(
            *params, data, labels, activation="relu"
        )
        momentum_step(params, velocity, grads, rate, mu, decay)

    *got, _ = mlp.train_mlp(
        *w,
        data,
        labels,
        lr,
        epochs,
        activation="relu",
        momentum=mu,
        schedule=schedule,
        weight_decay=decay,
    )
    for g, p in zip(got, params, strict=True):
        np.testing.assert_allclose(g, p, rtol=1e-4, atol=1e-5)


def test_mini_batches_with_flips_follow_the_documented_draws():
    # Several steps an epoch, so that the second thread draws batches two
    # steps ahead into its two buffers, each reused every other step.  The
    # reference draws the same rows and flips from the same random stream:
    # rng.permutation(n) per epoch, then rng.random(b) < 0.5 per batch.
    data, labels = blobs(n=70)
    flipped = -2 * data  # a "mirror image" of each row that changes the result
    w = [p.astype(np.float64) for p in mlp.init_weights(6, 5, 3, init="he", seed=4)]
    lr, mu, decay, epochs, batch, seed = 0.05, 0.9, 0.01, 3, 16, 9

    params, velocity = [p.copy() for p in w], [np.zeros_like(p) for p in w]
    rng = np.random.default_rng([seed, mlp.TRAINING])
    for _ in range(epochs):
        order = rng.permutation(len(data))
        batches = [order[i : i + batch] for i in range(0, len(data), batch)]
        flips = [rng.random(len(rows)) < 0.5 for rows in batches]
        for rows, mirrored in zip(batches, flips, strict=True):
            x = np.where(mirrored[:, None], flipped[rows], data[rows])
            _, grads, _ = mlp.gradients_cross_entropy(
                *params, x.astype(np.float64), labels[rows]
            )
            momentum_step(params, velocity, grads, lr, mu, decay)

    *got, _ = mlp.train_mlp(
        *w,
        data,
        labels,
        lr,
        epochs,
        batch_size=batch,
        momentum=mu,
        weight_decay=decay,
        flip=True,
        data_train_flipped=flipped,
        seed=seed,
    )
    for g, p in zip(got, params, strict=True):
        np.testing.assert_allclose(g, p, rtol=1e-4, atol=1e-5)


def test_draws_ahead_keep_a_batch_until_its_step_releases_it():
    # Row i of the source holds the value i, so that a batch's rows tell
    # which rows were drawn; 2 * AHEAD + 1 batches reuse each buffer twice.
    n, size = 40, 4
    source = np.repeat(np.arange(n, dtype=np.uint8)[:, None], 3, axis=1)
    drawer = mlp._BatchDrawer(source, n, size, buffers=mlp.AHEAD)
    order = np.random.default_rng(1).permutation(n)
    batches = [order[i : i + size] for i in range(0, (2 * mlp.AHEAD + 1) * size, size)]
    with ThreadPoolExecutor(max_workers=1) as pool:
        ahead = mlp._DrawAhead(drawer, pool)
        ahead.start(batches, [None] * len(batches))
        taken = []
        for step, rows in enumerate(batches):
            x, drawn_rows = ahead.take()
            np.testing.assert_array_equal(np.sort(rows), drawn_rows)
            taken.append((x, x.copy()))
            if step >= mlp.AHEAD - 1:
                # Every batch not yet released still holds its rows.
                for held, copy in taken[step - mlp.AHEAD + 1 :]:
                    np.testing.assert_array_equal(held, copy)
                ahead.release(step - mlp.AHEAD + 1)
            np.testing.assert_array_equal(x[1:, 0], np.sort(rows))
        assert not ahead.pending


@pytest.mark.parametrize("activation", ["sigmoid", "relu"])
def test_loss_decreases_on_a_separable_problem(activation):
    data, labels = blobs()
    w = mlp.init_weights(6, 16, 3, init="xavier", seed=0)
    *_, history = mlp.train_mlp(
        *w,
        data,
        labels,
        0.1,
        15,
        activation=activation,
        batch_size=16,
        momentum=0.9,
        schedule="cosine",
    )

    assert history.train_loss[-1] < 0.1 * history.train_loss[0]
    assert history.train_accuracy[-1] == 1.0


def test_on_epoch_reports_every_epoch_and_history_matches():
    data, labels = blobs()
    seen = []
    w = mlp.init_weights(6, 4, 3, init="xavier")
    *_, history = mlp.train_mlp(
        *w,
        data[:150],
        labels[:150],
        0.05,
        4,
        batch_size=32,
        schedule="step",
        data_val=data[150:],
        labels_val=labels[150:],
        on_epoch=lambda epoch, metrics: seen.append((epoch, metrics)),
    )

    assert [epoch for epoch, _ in seen] == [1, 2, 3, 4]
    assert [m["learning_rate"] for _, m in seen] == pytest.approx(
        [0.05, 0.05, 0.005, 0.0005]
    )
    assert set(seen[0][1]) == {*mlp.History.COLUMNS[1:], "learning_rate"}
    assert [m["val_accuracy"] for _, m in seen] == history.val_accuracy
    assert [row[0] for row in history.rows()] == [1, 2, 3, 4]


def test_weights_kept_are_those_of_the_best_validation_epoch():
    data, labels = blobs(n=300, spread=2.0)
    w = mlp.init_weights(6, 8, 3, init="xavier", seed=3)
    *kept, history = mlp.train_mlp(
        *w,
        data[:200],
        labels[:200],
        0.5,
        12,
        batch_size=8,
        data_val=data[200:],
        labels_val=labels[200:],
    )

    best = int(np.argmax(history.val_accuracy)) + 1
    assert history.best_epoch == best
    accuracy = mlp.test_mlp(*kept, data[200:], labels[200:])
    assert accuracy == history.val_accuracy[best - 1]


def test_learning_rate_schedules():
    cosine = [mlp.learning_rate_at(1.0, "cosine", e, 4) for e in range(1, 5)]
    assert cosine == pytest.approx([1.0, (1 + math.sqrt(0.5)) / 2, 0.5, 0.1464466])
    step = [mlp.learning_rate_at(1.0, "step", e, 8) for e in range(1, 9)]
    assert step == pytest.approx([1, 1, 1, 1, 0.1, 0.1, 0.01, 0.01])
    assert mlp.learning_rate_at(0.3, "constant", 7, 8) == 0.3


def test_divergence_names_the_epoch_and_suggests_a_smaller_rate():
    data, labels = blobs()
    w = mlp.init_weights(6, 8, 3, init="he")
    with pytest.raises(
        mlp.TrainingDivergedError,
        match=r"training diverged in epoch \d+: .* try a smaller learning_rate",
    ):
        mlp.train_mlp(*w, 100 * data, labels, 1e12, 20, activation="relu")


def test_data_with_nan_is_refused_before_training():
    data, labels = blobs()
    data[3, 2] = np.nan
    w = mlp.init_weights(6, 4, 3, init="xavier")
    with pytest.raises(ValueError, match=r"data_train holds NaN or infinite values"):
        mlp.train_mlp(*w, data, labels, 0.1, 1)


def test_tutorial_configuration_runs_through_run_mlp_training():
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, size=(60, 3072)).astype(np.float32)
    labels = np.arange(60) % 10

    accuracies, test_accuracy = mlp.run_mlp_training(
        data[:50], labels[:50], data[50:], labels[50:], 64, 0.1, 3
    )

    assert len(accuracies) == 3
    assert all(0.0 <= a <= 1.0 for a in accuracies)
    assert 0.0 <= test_accuracy <= 1.0


def test_mirror_images_reverses_the_x_axis_of_every_plane():
    rows = np.arange(2 * 3072, dtype=np.float32).reshape(2, 3072)
    mirrored = mlp.mirror_images(rows)

    images = rows.reshape(2, 3, 32, 32)
    np.testing.assert_array_equal(mirrored.reshape(2, 3, 32, 32), images[..., ::-1])
    assert (
        mirrored[0, 31] == rows[0, 0]
        and mirrored[1, 2 * 1024 + 32] == rows[1, 2 * 1024 + 63]
    )
    np.testing.assert_array_equal(mlp.mirror_images(mirrored), rows)


def test_flip_trains_on_a_mix_of_rows_and_their_mirror_images():
    data, labels = blobs(n=64)
    w = mlp.init_weights(6, 4, 3, init="xavier")
    kwargs = dict(batch_size=0, flip=True, seed=5)

    # A "mirror" equal to the data itself changes nothing (but the order in
    # which a batch's rows are summed)...
    *same, _ = mlp.train_mlp(
        *w, data, labels, 0.1, 2, data_train_flipped=data, **kwargs
    )
    *plain, _ = mlp.train_mlp(*w, data, labels, 0.1, 2)
    for a, b in zip(same, plain, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)

    # ...and with an all-zero "mirror", each full-batch step sees the data with
    # the rows drawn by rng.random(n) < 0.5 (one draw per epoch) zeroed.
    zeros = np.zeros_like(data)
    *got, _ = mlp.train_mlp(
        *w, data, labels, 0.1, 2, data_train_flipped=zeros, **kwargs
    )
    rng, expected = np.random.default_rng([5, mlp.TRAINING]), list(w)
    for _ in range(2):
        x = np.where((rng.random(len(data)) < 0.5)[:, None], zeros, data)
        *expected, _ = mlp.learn_once_cross_entropy(*expected, x, labels, 0.1)
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert not np.allclose(got[0], plain[0])


@pytest.mark.parametrize("batch_size", [0, 16])
def test_raw_rows_scaled_per_batch_train_as_scaled_rows(batch_size):
    images, labels = tiny_images(n=40)
    shift, scale = mlp.fit_scaling(images, "standardize", mirrored=True)
    w = mlp.init_weights(3072, 5, 10, init="xavier")
    kwargs = dict(batch_size=batch_size, momentum=0.9, flip=True, seed=3)

    *from_raw, history = mlp.train_mlp(
        *w,
        images[:30],
        labels[:30],
        0.05,
        3,
        input_shift=shift,
        input_scale=scale,
        data_val=images[30:],
        labels_val=labels[30:],
        **kwargs,
    )
    scaled = mlp.apply_scaling(images, shift, scale)
    *from_scaled, expected = mlp.train_mlp(
        *w,
        scaled[:30],
        labels[:30],
        0.05,
        3,
        data_val=scaled[30:],
        labels_val=labels[30:],
        **kwargs,
    )
    for a, b in zip(from_raw, from_scaled, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert history.val_loss == pytest.approx(expected.val_loss, rel=1e-5)


def test_folded_step_gives_the_gradient_of_scaled_rows():
    # One step on raw rows with the scaling folded into the first layer, in
    # float64, against gradients_cross_entropy on the scaled rows.
    params, raw, labels, _ = tiny_network(d_in=5, n=7)
    raw = 3 + 2 * raw
    shift = np.array([3.0, -1.0, 0.5, 2.0, 0.0])
    scale = np.array([0.5, 2.0, 1.0, 0.25, 3.0])
    folded = mlp._FoldedScaling(shift, scale)
    w1_raw = folded.to_raw(params[0])
    stacked = np.vstack([-shift, raw])  # the shift row, then the batch

    loss, grads, a2 = mlp._cross_entropy_step(
        w1_raw, *params[1:], stacked, labels, "sigmoid", True
    )
    raw_gradient = folded.scale_squared * grads.w1  # as train_mlp scales it
    expected_loss, expected, expected_a2 = mlp.gradients_cross_entropy(
        *params, (raw - shift) * scale, labels
    )

    assert loss == pytest.approx(expected_loss, rel=1e-12)
    np.testing.assert_allclose(a2, expected_a2, rtol=1e-12)
    # The gradient for w1r is scale times that of w1 (docs/backprop.md).
    np.testing.assert_allclose(raw_gradient, scale[:, None] * expected.w1, rtol=1e-10)
    for name in ("b1", "w2", "b2"):
        np.testing.assert_allclose(
            getattr(grads, name), getattr(expected, name), rtol=1e-10
        )
    np.testing.assert_allclose(folded.to_scaled(w1_raw), params[0], rtol=1e-15)


def test_scaling_is_folded_only_where_float32_keeps_it_accurate():
    assert mlp._FoldedScaling.accurate(np.array([120.0, 0.0]), np.array([0.02, 5.0]))
    assert not mlp._FoldedScaling.accurate(np.array([1e4, 0.0]), np.array([1.0, 1.0]))

    # Rows far from the origin relative to their spread: each batch is scaled,
    # and training matches training on rows scaled beforehand.
    rng = np.random.default_rng(4)
    data = (1e4 + rng.normal(size=(48, 6))).astype(np.float32)
    labels = np.arange(48) % 3
    shift, scale = mlp.fit_scaling(data, "standardize")
    assert not mlp._FoldedScaling.accurate(shift, scale)
    w = mlp.init_weights(6, 4, 3, init="xavier")
    kwargs = dict(batch_size=8, momentum=0.9, weight_decay=1e-3, seed=1)

    *from_raw, _ = mlp.train_mlp(
        *w, data, labels, 0.1, 3, input_shift=shift, input_scale=scale, **kwargs
    )
    scaled = mlp.apply_scaling(data, shift, scale)
    *from_scaled, _ = mlp.train_mlp(*w, scaled, labels, 0.1, 3, **kwargs)
    for a, b in zip(from_raw, from_scaled, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_flip_of_image_rows_equals_training_with_their_mirror_images():
    rng = np.random.default_rng(2)
    data = rng.normal(size=(40, 3072)).astype(np.float32)
    labels = np.arange(40) % 10
    w = mlp.init_weights(3072, 5, 10, init="xavier")
    kwargs = dict(batch_size=16, momentum=0.9, flip=True, seed=3)

    *in_batches, _ = mlp.train_mlp(*w, data, labels, 0.05, 3, **kwargs)
    *given, _ = mlp.train_mlp(
        *w, data, labels, 0.05, 3, data_train_flipped=mlp.mirror_images(data), **kwargs
    )
    for a, b in zip(in_batches, given, strict=True):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- #
# The pipeline's model                                                         #
# --------------------------------------------------------------------------- #


def tiny_images(n=80, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    return images, np.arange(n) % 10


FIT = dict(
    hidden_units=6,
    activation="relu",
    init="he",
    scaling="standardize",
    batch_size=16,
    epochs=3,
    learning_rate=0.01,
    momentum=0.9,
    schedule="cosine",
    weight_decay=1e-4,
    validation_fraction=0.25,
    flip=True,
    seed=7,
)


def test_gradients_written_into_given_arrays_equal_new_ones():
    params, data, labels, _ = tiny_network()
    out = mlp.Gradients(*(np.full_like(p, np.nan) for p in params))
    loss, expected, _ = mlp._cross_entropy_step(*params, data, labels, "relu")
    got_loss, got, _ = mlp._cross_entropy_step(*params, data, labels, "relu", out=out)
    assert got_loss == loss
    for g, o, e in zip(got, out, expected, strict=True):
        assert g is o
        np.testing.assert_array_equal(o, e)


@pytest.mark.parametrize("validating", [False, True])
def test_trained_weights_are_separate_arrays(validating):
    # Training keeps the weights as views of one flat buffer; it returns arrays
    # of their own.
    data, labels = blobs(n=60)
    w = mlp.init_weights(6, 5, 3, init="he", seed=1)
    val = {"data_val": data[:10], "labels_val": labels[:10]} if validating else {}
    *got, _ = mlp.train_mlp(*w, data, labels, 0.1, 2, batch_size=16, **val)
    for name, a in zip(PARAM_NAMES, got, strict=True):
        assert a.base is None, f"{name} is a view of another array"


def test_same_seed_same_weights_other_seed_other_weights():
    images, labels = tiny_images()
    first, _ = mlp.fit_mlp(images, labels, **FIT)
    again, _ = mlp.fit_mlp(images, labels, **FIT)
    other, _ = mlp.fit_mlp(images, labels, **(FIT | {"seed": 8}))

    for name in (*PARAM_NAMES, "validation_rows"):
        np.testing.assert_array_equal(getattr(first, name), getattr(again, name))
    assert not np.array_equal(first.w1, other.w1)
    assert not np.array_equal(first.validation_rows, other.validation_rows)


def test_fit_mlp_holds_out_validation_and_scales_with_training_rows_only():
    images, labels = tiny_images()
    model, history = mlp.fit_mlp(images, labels, **(FIT | {"flip": False}))

    assert len(model.validation_rows) == 20
    train_rows = np.setdiff1d(np.arange(80), model.validation_rows)
    np.testing.assert_allclose(model.shift, images[train_rows].mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(
        1 / model.scale, images[train_rows].std(axis=0), rtol=1e-4
    )
    assert len(history.train_loss) == 3 and 1 <= model.best_epoch <= 3


@pytest.mark.parametrize("pca_components", [0, 8])
def test_model_scores_the_validation_part_as_training_did(pca_components):
    images, labels = tiny_images()
    config = FIT | {"pca_components": pca_components}
    model, history = mlp.fit_mlp(images, labels, **config)

    assert model.w1.shape == (3072, FIT["hidden_units"])
    val = model.validation_rows
    accuracy = model.accuracy(images[val], labels[val])
    assert accuracy == history.val_accuracy[model.best_epoch - 1]


def test_pca_projection_decorrelates_and_damps_small_components():
    rng = np.random.default_rng(0)
    stds = np.array([8.0, 4.0, 2.0, 1.0, 0.5])
    rotation = np.linalg.qr(rng.normal(size=(5, 5)))[0]
    data = (rng.normal(size=(4000, 5)) * stds) @ rotation.T + 3.0

    projection = mlp.fit_pca(data.astype(np.float32), 3)
    projected = (data - data.mean(axis=0)) @ projection
    covariance = np.cov(projected, rowvar=False, bias=True)

    eigenvalues = np.linalg.eigvalsh(np.cov(data, rowvar=False, bias=True))[::-1]
    kept = eigenvalues[:3] / (eigenvalues[:3] + eigenvalues.mean())
    np.testing.assert_allclose(np.diag(covariance), kept / kept.mean(), rtol=1e-3)
    assert np.abs(covariance - np.diag(np.diag(covariance))).max() < 1e-3
    assert np.mean(np.diag(covariance)) == pytest.approx(1.0, rel=1e-3)


def test_pca_with_fewer_rows_than_features_matches_the_eigenvectors():
    rng = np.random.default_rng(1)
    data = rng.normal(size=(30, 50)) * np.linspace(3, 0.1, 50)

    projection = mlp.fit_pca(data.astype(np.float32), 4)

    centred = data - data.mean(axis=0)
    eigenvalues, vectors = np.linalg.eigh(centred.T @ centred / 30)
    eigenvalues, vectors = eigenvalues[::-1], vectors[:, ::-1]
    kept = eigenvalues[:4] / (eigenvalues[:4] + eigenvalues.mean())
    expected = vectors[:, :4] / np.sqrt(
        (eigenvalues[:4] + eigenvalues.mean()) * kept.mean()
    )
    signs = np.sign(np.sum(projection * expected, axis=0))
    np.testing.assert_allclose(projection * signs, expected, rtol=1e-3, atol=1e-5)


def test_pca_components_beyond_the_rank_are_refused():
    with pytest.raises(ValueError, match=r"pca_components must be in 1\.\.30 for data"):
        mlp.fit_pca(np.ones((30, 50), np.float32), 31)


def test_mirrored_scaling_commutes_with_flips():
    images, _ = tiny_images()
    shift, scale = mlp.fit_scaling(images, "standardize", mirrored=True)
    scaled_then_flipped = mlp.mirror_images(mlp.apply_scaling(images, shift, scale))
    flipped_then_scaled = mlp.apply_scaling(mlp.mirror_images(images), shift, scale)
    np.testing.assert_allclose(flipped_then_scaled, scaled_then_flipped, atol=1e-5)


def test_standardize_statistics_from_uint8_and_float32_agree():
    images, _ = tiny_images()
    from_uint8 = mlp.fit_scaling(images, "standardize", mirrored=True)
    from_float = mlp.fit_scaling(
        images.astype(np.float32), "standardize", mirrored=True
    )
    for a, b in zip(from_uint8, from_float, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)


@pytest.mark.parametrize(
    ("scaling", "shift", "scale"), [("none", 0, 1), ("divide255", 0, 1 / 255)]
)
def test_fixed_scalings(scaling, shift, scale):
    images, _ = tiny_images(n=5)
    got_shift, got_scale = mlp.fit_scaling(images, scaling)
    np.testing.assert_array_equal(got_shift, np.full(3072, shift, np.float32))
    np.testing.assert_array_equal(got_scale, np.full(3072, scale, np.float32))


def test_split_validation_is_a_partition():
    train, val = mlp.split_validation(103, 0.1, seed=4)
    assert len(val) == 10 and len(train) == 93
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), range(103))


def test_model_round_trips_through_npz(tmp_path):
    images, labels = tiny_images()
    model, _ = mlp.fit_mlp(images, labels, **FIT)
    model.save(tmp_path / "model.npz")
    loaded = mlp.MLPModel.load(tmp_path / "model.npz")

    assert loaded.activation == "relu" and loaded.best_epoch == model.best_epoch
    np.testing.assert_array_equal(
        loaded.predict_proba(images), model.predict_proba(images)
    )
    assert not list(tmp_path.glob(".tmp-*"))


def test_model_file_problems_name_the_file(tmp_path):
    path = tmp_path / "model.npz"
    with pytest.raises(PipelineError, match=r"model\.npz: cannot read"):
        mlp.MLPModel.load(path)

    np.savez(path, w1=np.zeros((3, 2)))
    with pytest.raises(PipelineError, match=r"model\.npz: missing arrays b1, w2"):
        mlp.MLPModel.load(path)


def test_fit_mlp_errors_name_the_keyword():
    images, labels = tiny_images()
    for bad, message in [
        ({"hidden_units": 0}, r"hidden_units must be >= 1, got 0"),
        ({"activation": "tanh"}, r"activation must be one of sigmoid, relu"),
        ({"learning_rate": 0.0}, r"learning_rate must be > 0, got 0.0"),
        ({"momentum": 1.0}, r"momentum must be >= 0 and < 1, got 1.0"),
    ]:
        with pytest.raises(ValueError, match=message):
            mlp.fit_mlp(images, labels, **(FIT | bad))


# --------------------------------------------------------------------------- #
# params.yaml validation of the mlp section                                   #
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("learning_rate", 0, r"'mlp\.learning_rate' must be > 0, got 0"),
        ("learning_rate", -0.1, r"'mlp\.learning_rate' must be > 0, got -0\.1"),
        ("hidden_units", 0, r"'mlp\.hidden_units' must be > 0, got 0"),
        ("activation", "tanh", r"'mlp\.activation' must be one of sigmoid, relu"),
        ("batch_size", -1, r"'mlp\.batch_size' must be >= 0"),
        ("flip", "yes", r"'mlp\.flip' must be true or false"),
    ],
)
def test_invalid_mlp_params_name_the_key(tmp_path, key, value, message):
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["mlp"][key] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params), encoding="utf-8")
    with pytest.raises(ParamsError, match=message):
        load_params(["mlp.seed"], path=path)


# --------------------------------------------------------------------------- #
# docs/backprop.md points at the lines that implement each formula            #
# --------------------------------------------------------------------------- #

LINK = re.compile(
    r"\[`([^`]+)`\]\(\.\./(src/cifar_baselines/mlp\.py|tests/test_mlp\.py)#L(\d+)\)"
)


def test_backprop_doc_links_point_at_the_code_they_quote():
    doc = (REPO / "docs" / "backprop.md").read_text(encoding="utf-8")
    links = LINK.findall(doc)

    assert len(links) >= 20
    for code, path, line in links:
        lines = (REPO / path).read_text(encoding="utf-8").splitlines()
        assert code in lines[int(line) - 1], (
            f"{path} line {line} lacks {code!r}; tools/update_doc_links.py re-points "
            "the links after an edit"
        )
    for test_id in re.findall(r"`(test_\w+)\[(\w+)-(\w+)\]`", doc):
        name, param, case = test_id
        assert name == "test_gradient_matches_central_differences"
        assert param in PARAM_NAMES and case in CASES


@pytest.mark.parametrize(
    ("environment", "expected"), [(None, "4"), ("", ""), ("12", "12")]
)
def test_blas_threads_sets_the_openblas_timeout_unless_the_environment_does(
    environment, expected
):
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    if environment is not None:
        env["OPENBLAS_THREAD_TIMEOUT"] = environment
    code = (
        "import os, cifar_baselines.blas_threads; "
        "print(os.environ['OPENBLAS_THREAD_TIMEOUT'])"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{expected}\n"
