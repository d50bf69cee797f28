"""`experiments.benchmarks.dsm_profile`: the profile's op categories from a real trace."""

from __future__ import annotations

import pytest

from experiments.benchmarks import dsm_profile


def test_category_from_op_paths():
    path = "jit(train_steps)/while/body/closed_call/"
    assert dsm_profile.category("ynn_fusion.3", path + "jvp(ScoreMLP)/hidden_1/dot_general") == (
        "matmul, forward")
    assert dsm_profile.category("dot.7", path + "transpose(jvp(ScoreMLP))/out/transpose") == (
        "matmul, backward")
    assert dsm_profile.category("cosine_concatenate_fusion", path + "jvp(ScoreMLP)/concatenate") \
        == "time embedding (sin, cos)"
    assert dsm_profile.category("add_divide_fusion", path + "jvp(ScoreMLP)/jit(silu)/div") == (
        "SiLU and its derivative")
    assert dsm_profile.category("while.2", path + "jvp(jit(_uniform))/while") == "random numbers"
    assert dsm_profile.category("multiply_add_fusion", path + "add") == (
        "optimiser, EMA, loss and the rest")


def test_profile_of_a_small_step_covers_every_op():
    shares, slowest = dsm_profile.profile(32, calls=2)
    ms = shares.pop("op ms per step")
    assert ms > 0 and set(shares) == set(dsm_profile.CATEGORIES)
    assert sum(shares.values()) == pytest.approx(1.0)
    # Every layer's forward and backward matmuls, the SiLUs and the sampling of t and z appear.
    for name in ("matmul, forward", "matmul, backward", "SiLU and its derivative",
                 "random numbers"):
        assert shares[name] > 0, (name, shares)
    assert len(slowest) == 8 and all(t > 0 for _, _, t in slowest)
