"""The regression problem of the score-estimation study: the Gaussian-mixture target, the
training, hold-out and test triples `(t, x0, x_t)`, the grid of GD step counts, and the errors and
fitted slopes every part reports."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from scorejax.analytic import GaussianMixture
from scorejax.ntk import error_weights, regression_inputs
from scorejax.score_sdes import VPSDE

F64 = jnp.float64


def make_target(config: ml_collections.ConfigDict) -> GaussianMixture:
    """`num_modes` equal-weight isotropic Gaussians on a circle (float64)."""
    k = config.target.num_modes
    angles = 2 * np.pi * np.arange(k) / k
    means = config.target.radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return GaussianMixture(
        jnp.ones(k, F64), jnp.asarray(means, F64), jnp.full((k,), config.target.std, F64)
    )


@functools.partial(jax.jit, static_argnames=("sde", "n", "t0", "x_scale"))
def sample_triples(gm: GaussianMixture, sde: VPSDE, key: jax.Array, n: int, t0: float,
                   x_scale: float) -> dict[str, jax.Array]:
    """`n` triples `(t, x0, x_t)`, `t ~ U[t0, T]`, one noise draw each, with `u` and `f*(u)`."""
    k_t, k_x, k_z = jax.random.split(key, 3)
    t = jax.random.uniform(k_t, (n,), F64, t0, sde.T)
    x0 = gm.sample(k_x, n)
    xt = sde.alpha(t)[:, None] * x0 + sde.sigma(t)[:, None] * jax.random.normal(k_z, x0.shape, F64)
    return {
        "t": t,
        "x0": x0,
        "xt": xt,
        "u": regression_inputs(xt, t, x_scale=x_scale),
        "f_star": gm.denoiser(xt, t, sde=sde),
    }


def path_errors(preds: jax.Array, test: dict[str, jax.Array], sde: VPSDE,
                bin_edges: np.ndarray) -> dict[str, np.ndarray]:
    """Errors of predictions `[K, B, d]` on the test triples: overall `[K]` and per bin `[K, J]`,
    under each weighting of `scorejax.ntk.error_weights`."""
    sq = np.sum((np.asarray(preds) - np.asarray(test["f_star"])[None]) ** 2, axis=-1)  # [K, B]
    bins = np.clip(np.searchsorted(bin_edges, np.asarray(test["t"]), side="right") - 1, 0,
                   len(bin_edges) - 2)
    out = {}
    for name, w in error_weights(test["t"], sde=sde)._asdict().items():
        e = sq * np.asarray(w)[None]
        out[name] = e.mean(axis=1)
        out[name + "_bins"] = np.stack([e[:, bins == j].mean(axis=1)
                                        for j in range(len(bin_edges) - 1)], axis=1)
    return out


def fit_slope(x: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of `log y` against `log x`."""
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def eigen_decay(eigvals: np.ndarray) -> float:
    """`beta` in `lam_i ~ i^{-beta}`, fitted on the middle of the spectrum (i in [5, n/8])."""
    lam = np.sort(np.asarray(eigvals))[::-1]
    i = np.arange(1, len(lam) + 1)
    sel = (i >= 5) & (i <= max(len(lam) // 8, 10))
    return -fit_slope(i[sel], lam[sel])

def ks_grid(config: ml_collections.ConfigDict) -> np.ndarray:
    """The GD step counts `k` at which the kernel paths are evaluated (log-spaced, `[K]`)."""
    return np.unique(np.round(np.logspace(0, math.log10(config.kernel.k_max),
                                          config.kernel.num_k)))


def num_val(config: ml_collections.ConfigDict, n: int) -> int:
    """Hold-out size for a training set of size `n`."""
    return max(int(config.kernel.val_fraction * n), 16)


def draw_triples(config, gm, sde) -> tuple[dict[str, np.ndarray], list[tuple[dict, dict]]]:
    """The test triples and, per seed, a training and a hold-out pool, from one draw.

    Every training set of size `n` is the first `n` triples of its seed's training pool (nested
    sets, so the learning curve against `n` is not blurred by resampling); its hold-out set is
    the first `num_val(n)` triples of the hold-out pool. One draw of the total size compiles one
    sampler for the whole study.
    """
    size = max(*config.kernel.ns, config.network.n, config.end_to_end.n)
    sizes = [config.num_test] + [size, num_val(config, size)] * config.kernel.num_seeds
    triples = sample_triples(gm, sde, jax.random.fold_in(jax.random.key(config.seed), 3),
                             sum(sizes), config.t0, config.x_scale)
    bounds = np.cumsum([0] + sizes)
    parts = [{k: np.asarray(v[a:b]) for k, v in triples.items()}
             for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    return parts[0], [(parts[1 + 2 * s], parts[2 + 2 * s])
                      for s in range(config.kernel.num_seeds)]


def prefix(triples: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    """The first `n` triples of `triples` (a training set, or its hold-out set, of a pool)."""
    return {k: v[:n] for k, v in triples.items()}
