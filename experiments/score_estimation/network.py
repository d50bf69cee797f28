"""Parts 1-2 of the score-estimation study: GD on a wide two-layer ReLU network next to the
infinite-width kernel path, their gap and the relative weight movement."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from experiments.score_estimation.kernel import kernel_paths
from experiments.score_estimation.problem import F64, path_errors, prefix
from scorejax.ntk import TwoLayerReLU
from scorejax.ntk_gd import gd_train
from scorejax.train.precision import precision_from_config


def network_run(config, gm, sde, test, pools, width: int) -> dict[str, np.ndarray]:
    """GD on the width-`width` network, recorded on a log grid, next to the kernel path."""
    c = config.network
    key = jax.random.fold_in(jax.random.key(config.seed), 7)
    train = prefix(pools[0], c.n)
    steps = np.unique(np.round(np.logspace(0, math.log10(c.max_steps), c.num_records))).astype(
        int)
    steps = np.concatenate([[0], steps])
    path, (kernel_pred,), kernel_train_mse = kernel_paths(
        train["u"], train["x0"], (test["u"],), jnp.asarray(steps, F64))
    net = TwoLayerReLU.init(jax.random.fold_in(key, width), width=width,
                            in_dim=train["u"].shape[1], out_dim=2, dtype=jnp.float32,
                            compute_dtype=precision_from_config(config).compute_dtype)
    to32 = lambda a: jnp.asarray(a, jnp.float32)
    rec = gd_train(net, to32(train["u"]), to32(train["x0"]), to32(test["u"]),
                   eta=float(path.eta), record_steps=steps)
    nn_pred = np.asarray(rec.predictions, np.float64)
    kernel_pred = np.asarray(kernel_pred)
    edges = np.linspace(config.t0, sde.T, config.kernel.num_time_bins + 1)
    nn_err = path_errors(nn_pred, test, sde, edges)
    kr_err = path_errors(kernel_pred, test, sde, edges)
    gap = np.sqrt(np.mean(np.sum((nn_pred - kernel_pred) ** 2, -1), axis=1))
    scale = np.sqrt(np.mean(np.sum(kernel_pred**2, -1), axis=1))
    return {
        "steps": steps,
        "nn_score_w": nn_err["score_w"],
        "nn_denoiser": nn_err["denoiser"],
        "kernel_score_w": kr_err["score_w"],
        "kernel_denoiser": kr_err["denoiser"],
        "rel_gap": gap / np.maximum(scale, 1e-12),
        "weight_change": rec.weight_change,
        "nn_train_mse": rec.train_mse,
        "kernel_train_mse": np.asarray(kernel_train_mse),
    }
