"""Evaluation in the score-matching study: samples against true samples, and the score error.

`evaluate` samples with the configured sampler and compares with fresh true samples (MMD^2, sliced
Wasserstein, energy distance; mode weights and off-mode fraction for mixtures), next to the
exact-mixture sampler and two true sample sets; for mixtures also the score error per time bin
and the training loss of the exact model.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from experiments.score_matching.family import Model, exact_model, make_loss
from experiments.score_matching.sampling import sample
from experiments.score_matching.setup import Setup
from scorejax import metrics as sm
from scorejax.analytic import GaussianMixture, exact_loss_floor
from scorejax.mode_metrics import mode_tv, mode_weights, near_modes

OFF_MODE_Z = 4.0


def _sample(setup: Setup, config, model: Model, params, key: jax.Array, n: int) -> jax.Array:
    return sample(config, setup.sde, model, params, key, (n, setup.data.dim))[0]


def _score_error_by_time(setup: Setup, config, params, key: jax.Array) -> dict[str, list[float]]:
    """Score error of the network against the exact marginal score, per diffusion-time bin.

    Bins are log-spaced between `t_min` and T. In each bin, `t` is uniform and `x_t ~ p_t`;
    reported: `sigma_t^2 E||s_theta - s*||^2` (the excess DSM loss over the exact score, i.e.
    the error the sigma2-weighted loss sees) and `E||s_theta - s*||^2 / E||s*||^2`.
    """
    mixture, sde = setup.data.mixture, setup.sde
    n_bins, n = config.eval.num_time_bins, config.eval.points_per_bin
    edges = np.geomspace(config.loss.t_min, sde.T, n_bins + 1)

    def one_bin(lo, hi, k):
        k_t, k_x = jax.random.split(k)
        t = jnp.exp(jax.random.uniform(k_t, (n,), minval=jnp.log(lo), maxval=jnp.log(hi)))
        x = mixture.marginal_sample(k_x, n, t, sde=sde)
        exact = mixture.marginal_score(x, t, sde=sde)
        err = jnp.sum((setup.score_fn(params, x, t) - exact) ** 2, -1)
        ref = jnp.sum(exact**2, -1)
        return jnp.mean(sde.sigma(t) ** 2 * err), jnp.mean(err) / jnp.mean(ref)

    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n_bins))
    excess, rel = jax.jit(lambda lo, hi, ks: jax.lax.map(lambda a: one_bin(*a), (lo, hi, ks)))(
        jnp.asarray(edges[:-1], jnp.float32), jnp.asarray(edges[1:], jnp.float32), keys
    )
    return {
        "time_bin_edges": edges.tolist(),
        "score_excess_loss": np.asarray(excess).tolist(),
        "score_rel_err": np.asarray(rel).tolist(),
    }


def _exact_loss_floor(setup: Setup, config, key: jax.Array, n: int = 65536) -> float:
    """The config's training loss at the exact mixture (`scorejax.analytic.exact_loss_floor`)."""
    mixture = setup.data.mixture
    loss_fn = make_loss(config, setup.sde, exact_model(mixture, setup.sde))
    floor = jax.jit(lambda k: exact_loss_floor(loss_fn, mixture, k, num_samples=n))
    return float(floor(key))


def _make_sample_metrics(config, mixture: GaussianMixture | None):
    """A jitted `(samples, reference, bandwidths, key) -> dict` of sample-quality metrics."""

    @jax.jit
    def compute(samples, reference, bandwidths, key):
        out = {
            "mmd2": sm.mmd2_rbf(samples, reference, bandwidths=bandwidths),
            "sliced_w2": sm.sliced_wasserstein(
                samples, reference, key, num_projections=config.eval.num_projections
            ),
            "energy": sm.energy_distance(samples, reference),
            "nonfinite": jnp.sum(~jnp.all(jnp.isfinite(samples), axis=-1)),
        }
        if mixture is not None:
            w = mode_weights(samples, mixture.means)
            pi = jnp.exp(mixture.log_weights)
            out |= {"mode_weights": w, "mode_weight_max_err": jnp.max(jnp.abs(w - pi))}
            out["mode_weight_tv"] = mode_tv(w, pi)
            # Samples more than 4 standard deviations from every component (bridges between
            # modes, outliers); a true sample is that far with probability about 3e-4 in 2-D.
            near = near_modes(samples, mixture.means, mixture.stds, num_stds=OFF_MODE_Z)
            out["off_mode_frac"] = jnp.mean(~jnp.any(near, axis=1))
        return out

    def to_python(samples, reference, bandwidths, key) -> dict[str, Any]:
        values = jax.device_get(compute(samples, reference, bandwidths, key))
        return {k: np.asarray(v).tolist() for k, v in values.items()}

    return to_python


def evaluate(setup: Setup, config, params, key: jax.Array) -> tuple[dict[str, Any], dict]:
    """Evaluate `params`; returns `(scalars and lists for the metrics, arrays to plot)`."""
    data, mixture = setup.data, setup.data.mixture
    n = config.eval.num_samples
    k_true, k_null, k_sample, k_sw, k_err, k_floor = jax.random.split(key, 6)

    @jax.jit
    def references(k_a, k_b):
        a, b = data.sample(k_a, n), data.sample(k_b, n)
        # One fixed set of bandwidths, so all MMD values below are on the same scale.
        mult = jnp.asarray(sm.DEFAULT_BANDWIDTH_MULTIPLIERS)
        return a, b, sm.median_bandwidth(a, b) * mult

    true, true_b, bandwidths = (np.asarray(a) for a in references(k_true, k_null))
    sample_metrics = _make_sample_metrics(config, mixture)
    results: dict[str, Any] = {}
    arrays: dict[str, Any] = {"true": true}

    t0 = time.perf_counter()
    # Host arrays throughout, so every call of the metrics function hits one compiled version.
    samples = np.asarray(_sample(setup, config, setup.model, params, k_sample, n))
    results["sample_seconds_incl_compile"] = time.perf_counter() - t0
    arrays["model"] = samples
    for k, v in sample_metrics(samples, true, bandwidths, k_sw).items():
        results[f"model/{k}"] = v
    for k, v in sample_metrics(true_b, true, bandwidths, k_sw).items():
        results[f"null/{k}"] = v

    if mixture is not None:
        # The same sampler and noise with the exact mixture: what a perfect network would reach.
        exact_fns = exact_model(mixture, setup.sde)
        exact = np.asarray(_sample(setup, config, exact_fns, None, k_sample, n))
        arrays["exact"] = exact
        for k, v in sample_metrics(exact, true, bandwidths, k_sw).items():
            results[f"exact/{k}"] = v
        results.update(
            {f"score/{k}": v for k, v in _score_error_by_time(setup, config, params, k_err).items()}
        )
        results["exact_loss_floor"] = _exact_loss_floor(setup, config, k_floor)
    return results, arrays
