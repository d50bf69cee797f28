"""Loss weightings as functions of the log-SNR `lambda`, written once for the whole path family.

Kingma & Gao (2023, "Understanding Diffusion Objectives", Sec. 2) write every diffusion loss as

    L_w = E_{t ~ U(0, T)} E_eps [ w(lambda_t) (-d lambda / dt) ||eps - eps_hat||^2 ],

so that a weighting is a function `w(lambda)` alone, independent of how a path spends its time
(their `p(lambda)` is the density of `lambda` under the time sampler). Here each training
weighting is given the way a loss applies it: as the per-example factor `omega` on the
eps-space squared error at the sampled `lambda`,

    loss = E[ omega(lambda) ||eps - eps_hat||^2 ],

and `kingma_gao_weight` turns an `omega` for uniform `t` into the invariant `w(lambda)`. Squared
errors in other spaces are the same error rescaled (`target_scale`):

    ||eps - eps_hat||^2 = e^lambda ||x0 - x0_hat||^2                  (x0 / denoiser space)
                        = sigmoid(lambda) ||v - v_hat||^2             (v-prediction, VP paths)
                        = sigmoid(lambda / 2)^2 ||u - u_hat||^2       (velocity, linear path)

Weightings (`omega`, on the eps error):

| name         | omega(lambda)                    | the loss it gives                          |
| ------------ | -------------------------------- | ------------------------------------------ |
| `sigma2`     | 1                                | `sigma^2 ||s - s*||^2` (DDPM's L_simple)   |
| `likelihood` | `-d lambda / dt`                 | `g(t)^2 ||s - s*||^2`, the ELBO (w = 1)    |
| `edm`        | `1 + e^(-lambda) / sigma_data^2` | EDM's `lambda(sigma) ||D - x0||^2`         |

EDM's weight (Karras et al. 2022, Table 1) `lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma
sigma_data)^2` on the denoiser error is `e^lambda + 1 / sigma_data^2` with `sigma = e^(-lambda /
2)` (EDM's noise level is `sigma_t / alpha_t` on every path), which is the `omega` above in eps
space (`edm_sigma_weight`).

The distillation weightings (Diff-Instruct, VSD, DMD) weight a *gradient*, not a squared error.
With `delta = s_fake - s_target` and `eps = -sigma_t s`, the per-pixel generator gradient (DisBack
eq. 8; ProlificDreamer eq. 9) is

    g = w(lambda) (eps_target - eps_fake) = w(lambda) sigma_t delta:

| name            | w(lambda)          | g                                                   |
| --------------- | ------------------ | --------------------------------------------------- |
| `diff_instruct` | `e^(-lambda / 2)`  | `(sigma^2 / alpha) delta = D_fake - D_target`       |
| `vsd`           | `sigmoid(-lambda)` | `sigma^3 delta` on VP paths (`omega = sigma^2`)     |
| `dmd`           | `e^(-lambda / 2)`  | as Diff-Instruct, then divided per example by       |
|                 |                    | `mean |x0 - D_target|` (data-dependent, not in `w`) |

`vsd` uses the VP value of `sigma^2` at the same `lambda`, so it is a function of `lambda` alone;
it equals ProlificDreamer's `omega(t) = 1 - alpha_bar_t` on VP paths and differs from
`sigma_t^2` on paths whose scale is not variance-preserving (VE, EDM).

Shapes: every function maps a `lambda` of any shape to an array of that shape.

Examples:
  >>> import jax.numpy as jnp
  >>> float(edm(jnp.array(0.0), sigma_data=0.5))
  5.0
  >>> float(diff_instruct(jnp.log(4.0)))
  0.5
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

WEIGHTINGS = ("sigma2", "likelihood", "edm")
DISTILL_WEIGHTINGS = ("diff_instruct", "vsd", "dmd")
TARGETS = ("eps", "x0", "v", "velocity")

__all__ = [
    "WEIGHTINGS",
    "DISTILL_WEIGHTINGS",
    "TARGETS",
    "sigma2",
    "likelihood",
    "edm",
    "edm_sigma_weight",
    "diff_instruct",
    "vsd",
    "dmd",
    "loss_weight",
    "distill_weight",
    "target_scale",
    "kingma_gao_weight",
]


def sigma2(log_snr: Array) -> Array:
    """`omega = 1`: the eps-MSE, i.e. `sigma^2 ||s - s*||^2` (Ho et al. 2020, eq. 14).

    Examples:
      >>> float(sigma2(jnp.array(3.0)))
      1.0
    """
    return jnp.ones_like(jnp.asarray(log_snr, dtype=jnp.result_type(log_snr, float)))


def likelihood(log_snr: Array, dlog_snr_dt: Array) -> Array:
    """`omega = -d lambda / dt`: `g(t)^2 ||s - s*||^2` with `g^2 = -sigma^2 lambda'`.

    The likelihood weighting of Song et al. 2021 ("Maximum likelihood training of score-based
    diffusion models", Thm. 1); Kingma & Gao's `w(lambda) = 1` (the ELBO). `dlog_snr_dt` is the
    path's `d lambda / dt` at the same `t` (same shape as `log_snr`).

    Examples:
      >>> float(likelihood(jnp.array(0.0), jnp.array(-2.0)))
      2.0
    """
    del log_snr
    return -jnp.asarray(dlog_snr_dt)


def edm(log_snr: Array, *, sigma_data: float = 0.5) -> Array:
    """`omega = 1 + e^(-lambda) / sigma_data^2`: EDM's `lambda(sigma)` in eps space.

    Karras et al. 2022, Table 1 ("loss weighting") and eq. 8, with `sigma^2 = e^(-lambda)`.

    Examples:
      >>> float(edm(jnp.array(0.0), sigma_data=1.0))
      2.0
    """
    return 1.0 + jnp.exp(-jnp.asarray(log_snr)) / sigma_data**2


def edm_sigma_weight(sigma: Array, *, sigma_data: float = 0.5) -> Array:
    """EDM's weight on the denoiser error, `(sigma^2 + sigma_data^2) / (sigma sigma_data)^2`.

    Karras et al. 2022, Table 1; computed as `e^lambda + 1 / sigma_data^2`, `lambda = -2 log
    sigma`, which is `edm(lambda) * target_scale(lambda, target="x0")`. `sigma` any shape (noise
    std in data units); returns its shape.

    Examples:
      >>> float(edm_sigma_weight(jnp.array(0.5), sigma_data=0.5))
      8.0
    """
    lam = -2.0 * jnp.log(jnp.asarray(sigma))
    return edm(lam, sigma_data=sigma_data) * target_scale(lam, target="x0")


def diff_instruct(log_snr: Array) -> Array:
    """`w = e^(-lambda / 2) = sigma / alpha`: unit weight in denoiser space (Diff-Instruct).

    `w sigma delta = (sigma^2 / alpha) delta = D_fake - D_target` on every path.

    Examples:
      >>> float(diff_instruct(jnp.array(0.0)))
      1.0
    """
    return jnp.exp(-0.5 * jnp.asarray(log_snr))


def vsd(log_snr: Array) -> Array:
    """`w = sigmoid(-lambda)`, the VP `sigma^2` (ProlificDreamer's `omega = 1 - alpha_bar_t`).

    Examples:
      >>> float(vsd(jnp.array(0.0)))
      0.5
    """
    return jax.nn.sigmoid(-jnp.asarray(log_snr))


def dmd(log_snr: Array) -> Array:
    """`w = e^(-lambda / 2)`; DMD then divides `g` per example by `mean |x0 - D_target|`.

    Examples:
      >>> float(dmd(jnp.array(0.0)))
      1.0
    """
    return jnp.exp(-0.5 * jnp.asarray(log_snr))


def loss_weight(
    log_snr: Array,
    dlog_snr_dt: Array | None = None,
    *,
    weighting: str,
    sigma_data: float = 0.5,
) -> Array:
    """`omega(lambda)` of the training weighting `weighting` (`WEIGHTINGS`), on the eps error.

    `loss = omega(lambda) ||eps - eps_hat||^2` (the table of the module docstring). `log_snr`
    any shape; `dlog_snr_dt`, the same shape, is required by `"likelihood"` only. Returns the
    shape of `log_snr`.

    Examples:
      >>> float(loss_weight(jnp.array(0.0), weighting="edm", sigma_data=0.5))
      5.0
    """
    if weighting == "sigma2":
        return sigma2(log_snr)
    if weighting == "likelihood":
        if dlog_snr_dt is None:
            raise ValueError("the likelihood weighting needs dlog_snr_dt")
        return likelihood(log_snr, dlog_snr_dt)
    if weighting == "edm":
        return edm(log_snr, sigma_data=sigma_data)
    raise ValueError(f"unknown weighting {weighting!r}; expected one of {WEIGHTINGS}")


def distill_weight(log_snr: Array, *, weighting: str) -> Array:
    """`w(lambda)` of the distillation weighting `weighting` (`DISTILL_WEIGHTINGS`).

    The per-pixel generator gradient is `g = w(lambda) sigma delta` (module docstring). `log_snr`
    any shape; returns its shape.

    Examples:
      >>> float(distill_weight(jnp.array(0.0), weighting="vsd"))
      0.5
    """
    fns = {"diff_instruct": diff_instruct, "vsd": vsd, "dmd": dmd}
    if weighting not in fns:
        raise ValueError(f"unknown weighting {weighting!r}; expected one of {DISTILL_WEIGHTINGS}")
    return fns[weighting](log_snr)


def target_scale(log_snr: Array, *, target: str) -> Array:
    """`c(lambda)` with `||eps - eps_hat||^2 = c ||y - y_hat||^2` for prediction target `y`.

    `eps`: 1; `x0`: `e^lambda`; `v` (v-prediction, VP paths): `sigmoid(lambda) = alpha^2`;
    `velocity` (linear path): `sigmoid(lambda / 2)^2 = (1 - t)^2`. Multiply a weight on the eps
    error by `c` to get the weight on the `target` error.

    Examples:
      >>> float(target_scale(jnp.array(0.0), target="x0"))
      1.0
    """
    lam = jnp.asarray(log_snr, dtype=jnp.result_type(log_snr, float))
    if target == "eps":
        return jnp.ones_like(lam)
    if target == "x0":
        return jnp.exp(lam)
    if target == "v":
        return jax.nn.sigmoid(lam)
    if target == "velocity":
        return jax.nn.sigmoid(0.5 * lam) ** 2
    raise ValueError(f"unknown target {target!r}; expected one of {TARGETS}")


def kingma_gao_weight(omega: Array, dlog_snr_dt: Array) -> Array:
    """Kingma & Gao's `w(lambda) = omega / (-d lambda / dt)` for a loss with `t ~ U(0, T)`.

    The likelihood weighting maps to `w = 1` on every path; `sigma2` maps to the density
    `p(lambda)` of the path's schedule (times `T`).

    Examples:
      >>> float(kingma_gao_weight(jnp.array(2.0), jnp.array(-2.0)))
      1.0
    """
    return omega / -jnp.asarray(dlog_snr_dt)
