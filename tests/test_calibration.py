"""Tests for scorejax.calibration against scikit-learn and explicit numpy loops."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from jax.test_util import check_grads
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss
from sklearn.metrics import log_loss as sk_log_loss

import scorejax
from scorejax import calibration as cal
from scorejax import risk_scores as rs

N = 64
FAST = settings(max_examples=20, deadline=None)
ECE_STATIC = ("num_bins", "binning", "variant", "closed")
ece = jax.jit(cal.expected_calibration_error, static_argnames=ECE_STATIC)
balance = jax.jit(cal.balance_score, static_argnames=("absolute",))


def _data(seed: int, n: int = N):
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.0, 1.0, n)
    y = (rng.uniform(size=n) < p**1.5).astype(np.int32)  # miscalibrated on purpose
    return p, y


# ----------------------------------------------------------------------------------------------
# Oracles


def ece_loop(p, y, num_bins, *, binning="equal_width", variant="probability", closed="right"):
    """ECE by an explicit loop over bins."""
    p = np.asarray(p, np.float64)
    y = np.asarray(y, np.float64)
    if variant == "top_label":
        conf, outcome = np.maximum(p, 1 - p), ((p >= 0.5) == (y == 1)).astype(float)
    else:
        conf, outcome = p, y
    if binning == "equal_width":
        edges = np.linspace(0, 1, num_bins + 1)
    else:
        edges = np.quantile(conf, np.linspace(0, 1, num_bins + 1))
        edges[0], edges[-1] = 0.0, 1.0
    # 'right': [e0, e1], (e1, e2], ...; 'left': [e0, e1), ..., [e_{M-1}, e_M].
    side = "left" if closed == "right" else "right"
    index = np.array([np.searchsorted(edges[1:-1], c, side=side) for c in conf])
    total = 0.0
    for b in range(num_bins):
        members = index == b
        if members.any():
            total += members.sum() / len(p) * abs(outcome[members].mean() - conf[members].mean())
    return total


def ece_sklearn(p, y, num_bins):
    """ECE from sklearn's calibration_curve plus bin counts (right-closed bins)."""
    prob_true, prob_pred = calibration_curve(y, p, n_bins=num_bins, strategy="uniform")
    edges = np.linspace(0, 1, num_bins + 1)
    counts = np.bincount(np.searchsorted(edges[1:-1], p, side="left"), minlength=num_bins)
    counts = counts[counts > 0]
    return float(np.sum(counts / len(p) * np.abs(prob_true - prob_pred)))


def balance_loop(p, y):
    out = []
    for pi, yi in zip(p, y, strict=True):
        if pi >= 0.5:
            out.append(1 - pi if yi == 1 else -pi)
        else:
            out.append(pi if yi == 0 else -(1 - pi))
    return float(np.mean(out))


# ----------------------------------------------------------------------------------------------
# Brier and log loss


@pytest.mark.parametrize("seed", [0, 1])
def test_brier_matches_sklearn(seed):
    p, y = _data(seed)
    np.testing.assert_allclose(cal.brier_score(p, y), brier_score_loss(y, p), rtol=1e-6)
    np.testing.assert_allclose(
        cal.brier_score(p, y, variant="sum_over_classes"), 2 * brier_score_loss(y, p), rtol=1e-6
    )
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(4), size=N)
    labels = rng.integers(0, 4, N)
    np.testing.assert_allclose(
        cal.brier_score(probs, labels),
        brier_score_loss(labels, probs, labels=np.arange(4)),
        rtol=1e-6,
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_log_loss_matches_sklearn(seed):
    p, y = _data(seed)
    p = np.clip(p, 0.01, 0.99)
    np.testing.assert_allclose(cal.log_loss(p, y), sk_log_loss(y, p), rtol=1e-5)
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(3), size=N)
    labels = rng.integers(0, 3, N)
    np.testing.assert_allclose(
        cal.log_loss(probs, labels), sk_log_loss(labels, probs, labels=np.arange(3)), rtol=1e-5
    )


@pytest.mark.parametrize("num_classes", [None, 3])
def test_brier_and_log_loss_reductions(num_classes):
    # "none": the per-forecast values (numpy for Brier, sklearn one forecast at a time for the log
    # loss); "sum" = N * "mean"; a misspelt reduction raises while tracing.
    rng = np.random.default_rng(5)
    if num_classes is None:
        p, y = _data(5, 16)
        p = np.clip(p, 0.01, 0.99)
        brier_ref = (p - y) ** 2
        cols = np.stack([1 - p, p], axis=-1)
    else:
        p = rng.dirichlet(np.ones(num_classes), size=16)
        y = rng.integers(0, num_classes, 16)
        brier_ref = np.sum((p - np.eye(num_classes)[y]) ** 2, axis=-1)
        cols = p
    classes = np.arange(cols.shape[1])
    log_ref = [sk_log_loss([yi], [ci], labels=classes) for yi, ci in zip(y, cols, strict=True)]
    for fn, ref in ((cal.brier_score, brier_ref), (cal.log_loss, np.asarray(log_ref))):
        np.testing.assert_allclose(fn(p, y, reduction="none"), ref, rtol=1e-5)
        np.testing.assert_allclose(
            fn(p, y, reduction="sum"), len(y) * fn(p, y, reduction="mean"), rtol=1e-5
        )
        with pytest.raises(ValueError, match="reduction"):
            jax.jit(lambda q, fn=fn: fn(q, y, reduction="avg"))(p)


def test_log_loss_clips_like_sklearn():
    with jax.enable_x64(True):
        p = np.array([0.0, 1.0, 0.3, 1.0])
        y = np.array([1, 0, 1, 1])
        np.testing.assert_allclose(cal.log_loss(p, y), sk_log_loss(y, p), rtol=1e-12)
        assert np.isinf(cal.log_loss(p, y, eps=0.0))


def test_brier_and_log_loss_gradients():
    p, y = _data(3, 16)
    p = jnp.asarray(np.clip(p, 0.05, 0.95), jnp.float64)
    with jax.enable_x64(True):
        check_grads(jax.jit(lambda q: cal.brier_score(q, y)), (p,), order=2, modes=["rev"])
        check_grads(jax.jit(lambda q: cal.log_loss(q, y)), (p,), order=2, modes=["rev"])


# ----------------------------------------------------------------------------------------------
# ECE


@pytest.mark.parametrize("num_bins", [5, 10, 15])
def test_ece_equal_width_matches_sklearn_calibration_curve(num_bins):
    p, y = _data(num_bins)
    with jax.enable_x64(True):
        got = cal.expected_calibration_error(p, y, num_bins=num_bins)
    np.testing.assert_allclose(got, ece_sklearn(p, y, num_bins), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("binning", ["equal_width", "equal_mass"])
@pytest.mark.parametrize("variant", ["probability", "top_label"])
@pytest.mark.parametrize("closed", ["right", "left"])
def test_ece_matches_loop(binning, variant, closed):
    p, y = _data(7)
    p = np.round(p, 1)  # many values exactly on equal-width edges: the conventions differ
    with jax.enable_x64(True):
        got = cal.expected_calibration_error(
            p, y, num_bins=10, binning=binning, variant=variant, closed=closed
        )
    want = ece_loop(p, y, 10, binning=binning, variant=variant, closed=closed)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_ece_edge_convention_matters_at_edges():
    p = np.array([0.1, 0.1, 0.2, 0.2])
    y = np.array([0, 0, 1, 1])
    right = cal.expected_calibration_error(p, y, num_bins=10, closed="right")
    left = cal.expected_calibration_error(p, y, num_bins=10, closed="left")
    # Right-closed: 0.1 -> bin 0, 0.2 -> bin 1; left-closed: 0.1 -> bin 1, 0.2 -> bin 2.
    # Either way each bin is pure, so both equal mean |y - p|; the bin counts differ.
    np.testing.assert_allclose(right, np.mean(np.abs(y - p)), rtol=1e-6)
    np.testing.assert_allclose(left, right, rtol=1e-6)
    r_bins = cal.reliability_bins(p, y, closed="right").count
    l_bins = cal.reliability_bins(p, y, closed="left").count
    np.testing.assert_array_equal(r_bins[:3], [2, 2, 0])
    np.testing.assert_array_equal(l_bins[:3], [0, 2, 2])


def test_reliability_bins_consistent_with_ece():
    p, y = _data(11)
    bins = cal.reliability_bins(p, y, num_bins=8)
    assert float(bins.count.sum()) == N
    full = np.asarray(bins.count) > 0
    ece = np.sum(bins.count[full] / N * np.abs(bins.accuracy[full] - bins.confidence[full]))
    np.testing.assert_allclose(ece, cal.expected_calibration_error(p, y, num_bins=8), rtol=1e-5)
    assert np.all(np.isnan(np.asarray(bins.confidence)[~full]))


def test_ece_gradient_is_minus_sign_of_bin_gap_over_n():
    p, y = _data(5, 32)
    p = jnp.asarray(p)
    grad = jax.grad(lambda q: cal.expected_calibration_error(q, y, num_bins=5))(p)
    idx = np.minimum(np.searchsorted(np.linspace(0, 1, 6)[1:-1], np.asarray(p)), 4)
    gap = np.array([np.sum((y - np.asarray(p))[idx == b]) for b in range(5)])
    np.testing.assert_allclose(grad, -np.sign(gap[idx]) / 32, rtol=1e-6)


@FAST
@given(
    value=st.floats(0.0, 1.0),
    labels=hnp.arrays(np.int32, 16, elements=st.integers(0, 1)),
    binning=st.sampled_from(["equal_width", "equal_mass"]),
)
def test_ece_all_equal_scores_is_calibration_in_the_large(value, labels, binning):
    p = np.full(16, value)
    got = ece(p, labels, num_bins=10, binning=binning)
    np.testing.assert_allclose(got, abs(labels.mean() - value), atol=1e-6)


@FAST
@given(
    probs=hnp.arrays(np.float64, 16, elements=st.floats(0.0, 1.0)),
    labels=hnp.arrays(np.int32, 16, elements=st.integers(0, 1)),
    num_bins=st.sampled_from([1, 10, 40]),
)
def test_ece_properties(probs, labels, num_bins):
    # Empty bins are common with 40 bins and 16 points; they must contribute nothing.
    with jax.enable_x64(True):
        got = float(ece(probs, labels, num_bins=num_bins))
    assert 0.0 <= got <= 1.0
    np.testing.assert_allclose(got, ece_loop(probs, labels, num_bins), atol=1e-12)
    # A single bin: calibration in the large.
    if num_bins == 1:
        np.testing.assert_allclose(got, abs(labels.mean() - probs.mean()), atol=1e-12)


# ----------------------------------------------------------------------------------------------
# Balance score


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_balance_matches_piecewise_definition(seed):
    p, y = _data(seed)
    p[:4] = 0.5  # the tie rule: p = 0.5 predicts 1
    with jax.enable_x64(True):
        got = cal.balance_score(p, y)
        np.testing.assert_allclose(got, balance_loop(p, y), atol=1e-14)
        np.testing.assert_allclose(cal.balance_score(p, y, absolute=True), abs(balance_loop(p, y)))


@FAST
@given(
    probs=hnp.arrays(np.float64, 16, elements=st.floats(0.0, 1.0)),
    labels=hnp.arrays(np.int32, 16, elements=st.integers(0, 1)),
)
def test_balance_properties(probs, labels):
    with jax.enable_x64(True):
        b = float(balance(probs, labels))
    assert -1.0 <= b <= 0.5
    np.testing.assert_allclose(b, balance_loop(probs, labels), atol=1e-12)


def test_balance_expectation_is_zero_when_calibrated():
    # If the true probability equals the forecast, E f = p - q = 0 for every forecast.
    rng = np.random.default_rng(0)
    p = rng.uniform(size=200_000)
    y = (rng.uniform(size=p.size) < p).astype(np.int32)
    assert abs(float(cal.balance_score(p, y))) < 5e-3


def test_balance_gradient():
    p = jnp.asarray([0.1, 0.3, 0.7, 0.9], jnp.float64)
    y = np.array([0, 1, 1, 0])
    with jax.enable_x64(True):
        check_grads(jax.jit(lambda q: cal.balance_score(q, y)), (p,), order=1, modes=["rev"])
        g = jax.grad(lambda q: cal.balance_score(q, y))(p)
    np.testing.assert_allclose(g, -np.sign(np.asarray(p) - 0.5) / 4)


# ----------------------------------------------------------------------------------------------
# Risk scores from answer-token probabilities


def risk_loop(token_probs, values):
    """folktexts' rule written out: best prefix by mass, normalise, positive choice or mean."""
    masses = token_probs.sum(axis=1)
    v = int(np.argmax(masses))
    chosen = token_probs[v]
    total = chosen.sum()
    probs = chosen / total if total > 0 else np.full_like(chosen, 1 / len(chosen))
    if len(values) == 2:
        return probs[int(np.argmax(values))]
    return float(np.dot(values, probs))


@pytest.mark.parametrize("num_choices", [2, 4])
def test_risk_score_matches_loop(num_choices):
    rng = np.random.default_rng(num_choices)
    token_probs = rng.uniform(0, 0.2, size=(10, 6, num_choices))
    token_probs[3] = 0.0  # no mass on any choice: uniform
    token_probs[4, 2] = token_probs[4, 1]  # a tie between prefix variants: the first wins
    values = rng.permutation(num_choices).astype(float) * 1.5
    got = rs.risk_score_from_choices(token_probs, values)
    want = [risk_loop(tp, values) for tp in token_probs]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    dist = rs.answer_choice_distribution(token_probs)
    np.testing.assert_allclose(dist.probs.sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(dist.probs[3], 1 / num_choices)


def test_risk_score_modes_and_gradient():
    token_probs = jnp.asarray([[[0.1, 0.3], [0.05, 0.05]]], jnp.float64)
    values = jnp.asarray([0.0, 1.0])
    with jax.enable_x64(True):
        np.testing.assert_allclose(rs.risk_score_from_choices(token_probs, values), [0.75])
        np.testing.assert_allclose(
            rs.risk_score_from_choices(token_probs, 2 * values + 1, mode="expected"), [2.5]
        )
        check_grads(
            jax.jit(lambda t: rs.risk_score_from_choices(t, values)), (token_probs,), order=1,
            modes=["rev"],
        )


# ----------------------------------------------------------------------------------------------
# jit, vmap, bad input, plot


def test_jit_and_vmap_match_eager():
    ps, ys = zip(*(_data(s, 32) for s in range(3)), strict=True)
    ps, ys = np.stack(ps), np.stack(ys)
    for fn in (
        cal.brier_score,
        cal.balance_score,
        lambda p, y: cal.expected_calibration_error(p, y, binning="equal_mass"),
        lambda p, y: cal.log_loss(p, y),
    ):
        eager = np.array([fn(p, y) for p, y in zip(ps, ys, strict=True)])
        np.testing.assert_allclose(jax.jit(jax.vmap(fn))(ps, ys), eager, rtol=1e-5)


@pytest.mark.parametrize(
    "call",
    [
        lambda: cal.brier_score([0.2, 1.2], [0, 1]),
        lambda: cal.brier_score([0.2, 0.3], [0, 2]),
        lambda: cal.brier_score([0.2, 0.3, 0.1], [0, 1]),
        lambda: cal.expected_calibration_error([0.2, -0.1], [0, 1]),
        lambda: cal.expected_calibration_error([0.2, 0.4], [0, 1], binning="quantile"),
        lambda: cal.log_loss([[0.5, 0.5]], [2]),
        lambda: cal.balance_score([], []),
        lambda: rs.risk_score_from_choices(np.full((2, 3), 0.1), [0.0, 1.0]),
        lambda: rs.answer_choice_distribution(np.full((2, 3), 1.5)),
    ],
)
def test_bad_input_raises(call):
    # Shapes and options raise while tracing; values under `scorejax.checked` (eagerly and jitted).
    with pytest.raises(ValueError):
        scorejax.checked(call)()
    with pytest.raises(ValueError):
        scorejax.checked(jax.jit(call))()


def test_traced_input_skips_value_checks():
    # Under jit the value checks cannot run; the function computes instead of raising.
    out = jax.jit(cal.brier_score)(jnp.asarray([0.5, 2.0]), jnp.asarray([0, 1]))
    np.testing.assert_allclose(out, (0.25 + 1.0) / 2)


def test_plot_reliability_diagram(tmp_path):
    import matplotlib  # in the experiments extra, which `make test` installs

    matplotlib.use("Agg")
    from scorejax.plotting import plot_reliability_diagram

    p, y = _data(0)
    ax = plot_reliability_diagram(cal.reliability_bins(p, y), title="test")
    assert len(ax.patches) == int(np.sum(np.asarray(cal.reliability_bins(p, y).count) > 0))
    ax.figure.savefig(tmp_path / "rel.png")
    assert (tmp_path / "rel.png").stat().st_size > 0


def test_image_grid_places_images_row_by_row_with_borders():
    from scorejax.plotting import image_grid

    images = np.arange(3 * 2 * 2, dtype=np.float32).reshape(3, 2, 2, 1)
    grid = image_grid(images, rows=2, fill=-1.0)
    assert grid.shape == (2 * 3 + 1, 2 * 3 + 1)
    np.testing.assert_array_equal(grid[1:3, 1:3], images[0, ..., 0])
    np.testing.assert_array_equal(grid[1:3, 4:6], images[1, ..., 0])
    np.testing.assert_array_equal(grid[4:6, 1:3], images[2, ..., 0])
    assert np.all(grid[4:6, 4:6] == -1.0)  # no fourth image
    assert np.all(grid[0] == -1.0) and np.all(grid[:, 3] == -1.0)
    rgb = image_grid(np.ones((2, 2, 2, 3), np.float32), rows=1, fill=0.0)
    assert rgb.shape == (4, 7, 3) and rgb[1, 1].tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match=r"\[N, H, W, C\]"):
        image_grid(np.ones((2, 2, 2)), rows=1, fill=0.0)
