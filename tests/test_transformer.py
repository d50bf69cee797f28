"""Tests for the tiny causal transformer LM and `lax.scan` temperature sampling."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scorejax import pass_at
from scorejax.logprobs import sequence_logprob, token_logprobs
from scorejax.models.transformer import TransformerLM, sample

V, L = 7, 8


@pytest.fixture(scope="module")
def model_and_params():
    model = TransformerLM(vocab_size=V, max_len=L, d_model=32, num_layers=2, num_heads=4)
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, L), jnp.int32))
    # Larger output weights than the init, so the next-token distributions are far from uniform.
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: x * 3.0 if "head" in jax.tree_util.keystr(path) else x, params
    )
    return model, params


def test_causal_and_jit_equals_eager(model_and_params):
    model, params = model_and_params
    tokens = jax.random.randint(jax.random.key(1), (3, L), 0, V)
    logits = jax.jit(model.apply)(params, tokens)
    assert logits.shape == (3, L, V)
    changed = tokens.at[:, 5].set((tokens[:, 5] + 1) % V)
    logits2 = jax.jit(model.apply)(params, changed)
    # Positions before the change see the same prefix; position 5 onwards differ.
    np.testing.assert_allclose(np.asarray(logits2[:, :5]), np.asarray(logits[:, :5]), atol=1e-5)
    assert np.abs(np.asarray(logits2[:, 5:] - logits[:, 5:])).max() > 1e-3
    with pytest.raises(ValueError, match="max_len"):
        model.apply(params, jnp.zeros((1, L + 1), jnp.int32))


def test_greedy_matches_step_by_step_argmax(model_and_params):
    model, params = model_and_params
    prompt = jax.random.randint(jax.random.key(2), (4, 3), 0, V)
    apply = jax.jit(model.apply)
    out = sample(partial(apply, params), prompt, jax.random.key(0), 3, temperature=0.0)
    buf = np.asarray(prompt)
    for _ in range(3):
        nxt = np.asarray(apply(params, jnp.asarray(buf)))[:, -1].argmax(-1)
        buf = np.concatenate([buf, nxt[:, None]], axis=1)
    np.testing.assert_array_equal(np.asarray(out), buf[:, 3:])


def test_sampled_pass_at_n_matches_exact(model_and_params):
    """Sampling + the unbiased estimator agree with exact pass@N from teacher forcing."""
    model, params = model_and_params
    num_prompts, k, answer_len, n = 4, 512, 2, 8
    prompt = jax.random.randint(jax.random.key(3), (num_prompts, 3), 0, V)
    logits_fn = partial(model.apply, params)

    @jax.jit
    def estimate_and_exact(temperature):
        # The reference answer of each prompt: one draw from the model, so p(answer) is moderate.
        answer = sample(logits_fn, prompt, jax.random.key(9), answer_len, temperature)
        reps = jnp.repeat(prompt, k, axis=0)
        draws = sample(logits_fn, reps, jax.random.key(4), answer_len, temperature)
        draws = draws.reshape(num_prompts, k, answer_len)
        correct = jnp.all(draws == answer[:, None, :], axis=-1).sum(-1)
        full = jnp.concatenate([prompt, answer], axis=1)
        mask = jnp.arange(full.shape[1] - 1) >= prompt.shape[1] - 1
        mask = jnp.broadcast_to(mask, (num_prompts, full.shape[1] - 1))
        per_token = token_logprobs(logits_fn(full)[:, :-1], full[:, 1:], temperature=temperature)
        logp = sequence_logprob(per_token, mask)
        return pass_at.pass_at_k(k, correct, n), pass_at.pass_at_n(logp, n=n), logp

    for temperature in (1.0, 1.7):
        estimate, exact, logp = estimate_and_exact(temperature)
        exact = np.asarray(exact)
        assert np.all(exact > 0.02) and np.all(exact < 0.99), exact
        # Per prompt, the estimator's std is below sqrt(pass@1 (1 - pass@1) / k) * n.
        p1 = np.exp(np.asarray(logp))
        tol = 4 * n * np.sqrt(p1 * (1 - p1) / k) + 1e-3
        assert np.all(np.abs(np.asarray(estimate) - exact) < tol), (temperature, estimate, exact)
