"""Part 3 of the score-estimation study: closed-form kernel (NTK) GD paths on one training set,
their test errors against the step count `k`, and the stopping rules (best, hold-out, RWY)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from experiments.score_estimation.problem import (
    F64,
    eigen_decay,
    ks_grid,
    num_val,
    path_errors,
    prefix,
)
from scorejax.ntk import relu_ntk
from scorejax.ntk_gd import KernelGDPath, rwy_stopping_step


@jax.jit
def kernel_paths(u_train: jax.Array, y_train: jax.Array, u_evals: tuple[jax.Array, ...],
                 ks: jax.Array) -> tuple[KernelGDPath, tuple[jax.Array, ...], jax.Array]:
    """Kernel GD from `(u_train, y_train)`: the path, its predictions `[K, B_i, d]` at each of
    `u_evals` for every `k` in `ks`, and the training MSE `[K]` (one compiled program)."""
    path = KernelGDPath.fit(relu_ntk(u_train, u_train), y_train)
    preds = tuple(path.predict_path(relu_ntk(u, u_train), ks) for u in u_evals)
    return path, preds, path.train_residual_path(ks)


@jax.jit
def kernel_predict(path: KernelGDPath, u_train: jax.Array, u: jax.Array, k: jax.Array) -> jax.Array:
    """`f_k(u)` `[B, d]` on the kernel GD path at one (real) step count `k`."""
    return path.predict(relu_ntk(u, u_train), k)


def kernel_run(config, gm, sde, test, pools, n: int) -> dict[str, np.ndarray]:
    """Kernel GD path on one training set: errors against k, stopping steps, spectrum."""
    train, val = prefix(pools[0], n), prefix(pools[1], num_val(config, n))
    ks = jnp.asarray(ks_grid(config), F64)
    path, (test_pred, val_pred), train_mse = kernel_paths(
        train["u"], train["x0"], (test["u"], val["u"]), ks)
    edges = np.linspace(config.t0, sde.T, config.kernel.num_time_bins + 1)
    errs = path_errors(test_pred, test, sde, edges)
    val_mse = np.mean(np.sum((np.asarray(val_pred) - np.asarray(val["x0"])[None]) ** 2, -1),
                      axis=1)
    # Label noise per coordinate, from the exact posterior mean (an oracle quantity).
    noise_std = float(np.sqrt(np.mean((np.asarray(train["x0"] - train["f_star"])) ** 2)))
    eta = float(path.eta)
    k_rwy = rwy_stopping_step(np.asarray(path.eigvals), noise_std=noise_std, eta=eta,
                              max_steps=config.kernel.k_max)
    rwy_pred = kernel_predict(path, train["u"], test["u"], jnp.asarray(k_rwy, F64))
    rwy_errs = path_errors(rwy_pred[None], test, sde, edges)
    return {
        "ks": np.asarray(ks),
        "train_mse": np.asarray(train_mse),
        "val_mse": val_mse,
        "noise_std": noise_std,
        "k_rwy": k_rwy,
        "eta": eta,
        "beta": eigen_decay(np.asarray(path.eigvals)),
        **{name: v for name, v in errs.items()},
        **{f"rwy_{name}": v[0] for name, v in rwy_errs.items()},
    }

def stopping_summary(run: dict[str, np.ndarray], metric: str) -> dict[str, float]:
    """Best, validation-chosen and RWY steps and the test `metric` at each."""
    ks, err = run["ks"], run[metric]
    i_best, i_val = int(np.argmin(err)), int(np.argmin(run["val_mse"]))
    return {
        "k_best": float(ks[i_best]),
        "k_val": float(ks[i_val]),
        "k_rwy": float(run["k_rwy"]),
        "err_best": float(err[i_best]),
        "err_val": float(err[i_val]),
        "err_rwy": float(run[f"rwy_{metric}"]),
        "err_last": float(err[-1]),
        "err_first": float(err[0]),
    }
