"""Part 4 of the score-estimation study, end to end: samples of the exact, early-stopped and
over-trained scores through one Euler-Maruyama sampler, their MMD to fresh samples, mode weights
and distance to the nearest training point."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from experiments.score_estimation.kernel import kernel_paths
from experiments.score_estimation.problem import F64, ks_grid, num_val, path_errors, prefix
from scorejax.metrics import mmd2_rbf
from scorejax.mode_metrics import mode_tv, mode_weights
from scorejax.ntk import regression_inputs, relu_ntk
from scorejax.sampling import euler_maruyama
from scorejax.score_matching import score_from_x0


def end_to_end(config, gm, sde, test, pools) -> dict[str, np.ndarray]:
    """Samples of the exact, early-stopped and over-trained scores through one sampler.

    The early-stopping step is the one with the least test sigma-weighted score error
    (`end_to_end.stop = "best"`) or the least hold-out error on noisy labels (`"val"`).
    """
    c = config.end_to_end
    key = jax.random.fold_in(jax.random.key(config.seed), 11)
    k_sample, k_ref, k_mmd = jax.random.split(key, 3)
    train, val = prefix(pools[0], c.n), prefix(pools[1], num_val(config, c.n))
    ks = jnp.asarray(ks_grid(config), F64)
    path, (test_pred, val_pred), _ = kernel_paths(train["u"], train["x0"],
                                                  (test["u"], val["u"]), ks)
    val_mse = np.mean(np.sum((np.asarray(val_pred) - np.asarray(val["x0"])[None]) ** 2, -1),
                      axis=1)
    edges = np.linspace(config.t0, sde.T, config.kernel.num_time_bins + 1)
    test_err = path_errors(test_pred, test, sde, edges)["score_w"]
    if c.stop not in ("best", "val"):
        raise ValueError(f"config.end_to_end.stop must be 'best' or 'val', got {c.stop!r}")
    k_best, k_val = float(ks[int(np.argmin(test_err))]), float(ks[int(np.argmin(val_mse))])
    k_early = k_best if c.stop == "best" else k_val
    u_train = train["u"]

    def x0_fn(coef, x, t):
        return relu_ntk(regression_inputs(x, t, x_scale=config.x_scale), u_train) @ coef

    learned = score_from_x0(x0_fn, sde=sde)
    coefficients = jax.jit(path.coefficients)
    scores = {
        "exact": (lambda _, x, t: gm.marginal_score(x, t, sde=sde), None),
        "early": (learned, coefficients(k_early)),
        "overtrained": (learned, coefficients(c.overtrained_k)),
    }
    # One compiled sampler per score function: early and over-trained share theirs.
    samplers = {
        fn: jax.jit(lambda p, k, fn=fn: euler_maruyama(
            fn, p, k, sde=sde, shape=(c.num_samples, 2), num_steps=c.sampler_steps, t_eps=config.t0,
            dtype=F64)[0])
        for fn in {id(fn): fn for fn, _ in scores.values()}.values()
    }
    denoise_learned = jax.jit(x0_fn)
    reference = gm.marginal_sample(k_ref, c.num_samples, config.t0, sde=sde)
    ref_clean = gm.denoiser(reference, config.t0, sde=sde)

    @jax.jit
    def nearest(points: jax.Array) -> jax.Array:
        d2 = jnp.sum((points[:, None] - train["x0"][None]) ** 2, -1)
        return jnp.sqrt(jnp.min(d2, axis=1))

    out: dict[str, Any] = {"k_early": k_early, "k_best": k_best, "k_val": k_val,
                           "k_over": float(c.overtrained_k),
                           "ref_nn_dist": float(jnp.mean(nearest(reference))),
                           "ref_clean_nn_dist": float(jnp.mean(nearest(ref_clean))),
                           "train_x0": np.asarray(train["x0"])}
    t0 = jnp.full((c.num_samples,), config.t0, F64)
    for name, (score_fn, params) in scores.items():
        x = samplers[score_fn](params, k_sample)
        clean = gm.denoiser(x, t0, sde=sde) if name == "exact" else denoise_learned(params, x, t0)
        weights = mode_weights(clean, gm.means)
        out[f"{name}_samples"] = np.asarray(x)
        out[f"{name}_clean"] = np.asarray(clean)
        out[f"{name}_mmd2"] = float(mmd2_rbf(x, reference))
        out[f"{name}_nn_dist"] = float(jnp.mean(nearest(x)))
        out[f"{name}_clean_nn_dist"] = float(jnp.mean(nearest(clean)))
        out[f"{name}_mode_tv"] = float(mode_tv(weights, jnp.exp(gm.log_weights)))
    other = gm.marginal_sample(k_mmd, c.num_samples, config.t0, sde=sde)
    out["null_mmd2"] = float(mmd2_rbf(other, reference))
    return out
