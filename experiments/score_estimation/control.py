"""Part 3's positive control of the RWY stopping rule: a target in the unit ball of the NTK's
RKHS on the same inputs, and the RKHS norm of the denoiser target that the rule's guarantee
assumes to be at most 1."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from experiments.score_estimation.problem import F64, ks_grid, prefix
from scorejax.ntk import relu_ntk
from scorejax.ntk_gd import KernelGDPath, rwy_stopping_step


def rwy_control(config, test, pools, n: int, k_best: float) -> dict[str, np.ndarray]:
    """Positive control of the RWY rule on the same inputs and kernel, and the premise it needs.

    Control: labels `y = f_c(u) + s eps` with `f_c(u) = K(u, Z) a` in the unit ball of the NTK's
    RKHS (`||f_c||_H^2 = a^T K(Z, Z) a = 1`; `Z` the first `kernel.control_centres` hold-out
    inputs), for each noise level `s` in `kernel.control_noise`: the best step's and the RWY
    step's test error `E (f_k - f_c)^2`, all `[S]`. Premise: RWY's guarantee assumes
    `||f*||_H <= 1`; `target_norm` `[d]` is the RKHS norm per coordinate of GD on the exact
    denoiser labels `f*(U)` at `k_best` (the noisy-label path's best step),
    `||f_k||_H^2 = sum_i lam_i phi_k(lam_i)^2 (V^T f*)_i^2`.
    """
    train, held = prefix(pools[0], n), pools[1]
    u, u_test = jnp.asarray(train["u"]), jnp.asarray(test["u"])
    clean = KernelGDPath.fit(relu_ntk(u, u), jnp.asarray(train["f_star"]))
    centres = jnp.asarray(held["u"][: config.kernel.control_centres])
    key = jax.random.fold_in(jax.random.key(config.seed), n)
    coef = jax.random.normal(jax.random.fold_in(key, 0), (centres.shape[0], 1), F64)
    coef = coef / jnp.sqrt(coef.T @ relu_ntk(centres, centres) @ coef)
    f_train, f_test = relu_ntk(u, centres) @ coef, relu_ntk(u_test, centres) @ coef
    cross, ks = relu_ntk(u_test, u), jnp.asarray(ks_grid(config), F64)
    out: dict[str, list[float]] = {"err_best": [], "k_best": [], "err_rwy": [], "k_rwy": []}
    for i, noise in enumerate(config.kernel.control_noise):
        eps = jax.random.normal(jax.random.fold_in(key, i + 1), f_train.shape, F64)
        path = clean.replace(proj_labels=clean.eigvecs.T @ (f_train + noise * eps))
        err = jnp.mean((path.predict_path(cross, ks) - f_test[None]) ** 2, axis=(1, 2))
        k_rwy = rwy_stopping_step(np.asarray(path.eigvals), noise_std=noise, eta=float(path.eta),
                                  max_steps=config.kernel.k_max)
        out["err_best"].append(float(jnp.min(err)))
        out["k_best"].append(float(ks[jnp.argmin(err)]))
        out["err_rwy"].append(float(jnp.mean((path.predict(cross, k_rwy) - f_test) ** 2)))
        out["k_rwy"].append(k_rwy)
    norm2 = jnp.sum(clean.eigvals[:, None] * clean.filter(k_best)[:, None] ** 2
                    * clean.proj_labels ** 2, axis=0)
    return {**{k: np.asarray(v) for k, v in out.items()}, "target_norm": np.sqrt(norm2)}
