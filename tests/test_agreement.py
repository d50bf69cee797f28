"""Tests for scorejax.agreement (QWK, agreement rates) against scikit-learn."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sklearn.metrics import (
    cohen_kappa_score,
)

import scorejax
from scorejax import agreement as ag

FAST = settings(max_examples=20, deadline=None)


# ----------------------------------------------------------------------------------------------
# Essay scoring


_qwk = jax.jit(ag.quadratic_weighted_kappa, static_argnames=("min_rating", "max_rating"))


@FAST
@given(
    a=hnp.arrays(np.int32, 30, elements=st.integers(1, 5)),
    b=hnp.arrays(np.int32, 30, elements=st.integers(1, 5)),
)
def test_qwk_matches_sklearn_with_fixed_labels(a, b):
    got = float(_qwk(a, b, min_rating=1, max_rating=5))
    with np.errstate(all="ignore"):
        want = cohen_kappa_score(a, b, weights="quadratic", labels=np.arange(1, 6))
    if np.isnan(want):
        assert math.isnan(got)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_qwk_range_convention_and_undefined():
    a = np.array([1, 2, 4, 4, 2, 1])
    b = np.array([1, 4, 4, 2, 2, 1])
    fixed = float(ag.quadratic_weighted_kappa(a, b, min_rating=1, max_rating=4))
    np.testing.assert_allclose(
        fixed, cohen_kappa_score(a, b, weights="quadratic", labels=np.arange(1, 5)), rtol=1e-6
    )
    # Without labels sklearn weights by index over the observed {1, 2, 4}: a different number.
    assert not np.isclose(fixed, cohen_kappa_score(a, b, weights="quadratic"))
    const = np.full(5, 3)
    assert math.isnan(float(ag.quadratic_weighted_kappa(const, const, min_rating=1, max_rating=5)))
    assert (
        float(
            ag.quadratic_weighted_kappa(const, const, min_rating=1, max_rating=5, if_undefined=1.0)
        )
        == 1.0
    )
    np.testing.assert_array_equal(
        ag.round_ratings(np.array([0.2, 1.5, 2.5, 3.49, 7.0]), min_rating=1, max_rating=5),
        [1, 2, 2, 3, 5],
    )


def test_agreement_rates():
    a = np.array([1, 2, 3, 4, 5, 3, 2])
    b = np.array([1, 3, 5, 4, 4, 3, 1])
    np.testing.assert_allclose(ag.exact_agreement(a, b), 3 / 7)
    np.testing.assert_allclose(ag.adjacent_agreement(a, b), 6 / 7)
    np.testing.assert_allclose(ag.adjacent_agreement(a, b, denominator="errors"), 3 / 4)
    assert math.isnan(float(ag.adjacent_agreement(a, a, denominator="errors")))


@pytest.mark.parametrize(
    "call",
    [
        lambda: ag.quadratic_weighted_kappa(
            np.array([1, 6]), np.array([1, 2]), min_rating=1, max_rating=5
        ),
        lambda: ag.quadratic_weighted_kappa(
            np.array([1.5, 2]), np.array([1, 2]), min_rating=1, max_rating=5
        ),
        lambda: ag.adjacent_agreement(np.array([1, 2]), np.array([1, 2]), denominator="some"),
    ],
)
def test_bad_input_raises(call):
    # Shapes and options raise while tracing; values under `scorejax.checked` (eagerly and jitted).
    with pytest.raises(ValueError):
        scorejax.checked(call)()
    with pytest.raises(ValueError):
        scorejax.checked(jax.jit(call))()
