"""Gradient descent on the score-estimation regression: on the NTK in closed form, and on the net.

The regression of `scorejax.ntk` (Han, Razaviyayn & Xu, ICLR 2024) is fitted by full-batch
gradient descent (GD) from `f_0 = 0` on the loss `(1/2n) sum_j ||f(u_j) - y_j||^2` with step
`eta`, and stopped early because the labels are noisy:

- `KernelGDPath`: GD on the kernel model, in closed form through the eigendecomposition of the
  training Gram matrix `G = V diag(lam) V^T`:

      f_k(u) = K(u, U) V diag(phi_k(lam)) V^T Y,   phi_k(lam) = (1 - (1 - eta lam / n)^k) / lam,

  a spectral filter that interpolates the labels as `k -> infinity`.
- `kernel_complexity`, `rwy_stopping_step`: the early-stopping rule of Raskutti, Wainwright & Yu
  (JMLR 2014) for kernel GD, from the empirical kernel complexity of `G / n`.
- `gd_train`: full-batch GD on the hidden layer of the network `scorejax.ntk.TwoLayerReLU`
  itself, recorded at given steps (it tracks `KernelGDPath` with the network's NTK).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from scorejax.ntk import TwoLayerReLU

Array = jax.Array

__all__ = ["KernelGDPath", "kernel_complexity", "rwy_stopping_step", "GDRecord", "gd_train"]


@flax.struct.dataclass
class KernelGDPath:
    """Closed-form GD path of kernel regression from `f_0 = 0` (module docstring).

    Attributes:
      eigvals: `[n]` eigenvalues `lam` of the training Gram matrix `G`.
      eigvecs: `[n, n]` eigenvectors `V`.
      proj_labels: `[n, d]` `V^T Y`.
      eta: GD step size on the loss `(1/2n) sum ||f(u_j) - y_j||^2`, at most `n / lam_max`.

    Examples:
      >>> import jax.numpy as jnp
      >>> path = KernelGDPath.fit(jnp.eye(2), jnp.array([[1.0], [2.0]]))  # eta = n / lam = 2
      >>> print(path.predict(jnp.eye(2), 1.0))  # one step with eta lam / n = 1 fits exactly
      [[1.]
       [2.]]
      >>> print(path.train_residual_path(jnp.array([0.0, 1.0])))
      [2.5 0. ]
    """

    eigvals: Array
    eigvecs: Array
    proj_labels: Array
    eta: Array  # a leaf, so paths with different step sizes share one compiled program

    @classmethod
    def fit(
        cls, gram: Array, labels: Array, *, eta: float | Array | None = None
    ) -> KernelGDPath:
        """Eigendecompose `gram` `[n, n]` once; `eta` defaults to its largest value n / lam_max.

        Works under `jax.jit`; the step-size check runs when `eta` and `gram` are concrete.
        """
        gram = jnp.asarray(gram)
        n = gram.shape[0]
        if gram.shape != (n, n) or labels.shape[0] != n:
            raise ValueError(
                f"need gram [n, n] and labels [n, d], got {gram.shape}, {labels.shape}"
            )
        lam, vecs = jnp.linalg.eigh(0.5 * (gram + gram.T))
        lam = jnp.maximum(lam, 0.0)
        eta = n / lam[-1] if eta is None else jnp.asarray(eta, lam.dtype)
        # eta <= n / lam_max keeps every factor 1 - eta lam / n in [0, 1): a monotone filter.
        # (GD is stable up to 2 n / lam_max, but oscillates beyond n / lam_max.)
        if not isinstance(eta * lam[-1], jax.core.Tracer):
            if not 0 < float(eta * lam[-1]) / n <= 1 + 1e-9:
                raise ValueError(f"eta={float(eta)} is too large: need 0 < eta <= n / lam_max = "
                                 f"{n / float(lam[-1])}")
        return cls(eigvals=lam, eigvecs=vecs, proj_labels=vecs.T @ labels, eta=eta)

    @property
    def num_train(self) -> int:
        return self.eigvals.shape[0]

    def filter(self, k: Array | float) -> Array:
        """`phi_k(lam) = (1 - (1 - eta lam / n)^k) / lam`, with limit `k eta / n` at `lam = 0`.

        `k` scalar (real-valued k interpolates the integer path); returns `[n]`.
        """
        shrink = self._keep(k, complement=True)
        safe = jnp.where(self.eigvals > 0, self.eigvals, 1.0)
        return jnp.where(self.eigvals > 0, shrink / safe, k * self.eta / self.num_train)

    def _keep(self, k: Array | float, complement: bool = False) -> Array:
        """`(1 - eta lam / n)^k` per eigenvalue (`1 -` that with `complement`), `[n]`.

        Written as `exp(k log1p(-rate))` (and `-expm1(...)` for the complement) so that tiny
        rates keep full relative precision; a rate of exactly 1 gives `0^k`.
        """
        rate = jnp.minimum(self.eta * self.eigvals / self.num_train, 1.0)
        log_keep = k * jnp.log1p(-jnp.where(rate < 1.0, rate, 0.0))
        at_one = jnp.where(k > 0, 0.0, 1.0)
        if complement:
            return jnp.where(rate < 1.0, -jnp.expm1(log_keep), 1.0 - at_one)
        return jnp.where(rate < 1.0, jnp.exp(log_keep), at_one)

    def coefficients(self, k: Array | float) -> Array:
        """`c_k = V diag(phi_k) V^T Y` `[n, d]`, so that `f_k(u) = K(u, U) c_k`."""
        return self.eigvecs @ (self.filter(k)[:, None] * self.proj_labels)

    def predict(self, cross_gram: Array, k: Array | float) -> Array:
        """`f_k` at test points from their kernel rows `K(u_test, U)` `[B, n]`; `[B, d]`."""
        return cross_gram @ self.coefficients(k)

    def predict_path(self, cross_gram: Array, ks: Array) -> Array:
        """`f_k` for every `k` in `ks` `[K]`: `[K, B, d]`, from one projection `K(u, U) V`."""
        basis = cross_gram @ self.eigvecs
        return jax.vmap(lambda k: basis @ (self.filter(k)[:, None] * self.proj_labels))(ks)

    def train_residual_path(self, ks: Array) -> Array:
        """Training MSE `(1/n) ||f_k(U) - Y||_F^2` for every `k` in `ks`; `[K]`.

        On the training points `f_k(U) - Y = -V diag((1 - eta lam / n)^k) V^T Y`.
        """
        def one(k):
            return jnp.sum((self._keep(k)[:, None] * self.proj_labels) ** 2) / self.num_train

        return jax.vmap(one)(ks)


def kernel_complexity(eigvals_normalized: Array, eps: Array | float) -> Array:
    """Empirical kernel complexity `R(eps) = sqrt((1/n) sum_i min(lam_i, eps^2))`.

    `eigvals_normalized` are the eigenvalues of `G / n` (Raskutti, Wainwright & Yu 2014, eq. 7).

    Examples:
      >>> import jax.numpy as jnp
      >>> round(float(kernel_complexity(jnp.array([4.0, 0.0]), 1.0)), 4)  # sqrt(min(4, 1) / 2)
      0.7071
    """
    lam = jnp.asarray(eigvals_normalized)
    return jnp.sqrt(jnp.mean(jnp.minimum(lam, jnp.asarray(eps) ** 2)))


def rwy_stopping_step(
    eigvals: Array, *, noise_std: float, eta: float, max_steps: float = 1e9
) -> float:
    """Early-stopping step of Raskutti, Wainwright & Yu (JMLR 2014, Thm. 1) for kernel GD.

    With constant step `eta` on `(1/2n) sum (f(u_j) - y_j)^2`, the GD iterates in their
    normalisation (kernel `G / n`, step `eta`) have running step sum `eta_k = k eta`; the rule
    stops at the last `k` before

        R(1 / sqrt(eta_k)) > 1 / (2 e noise_std eta_k),

    where `R` is `kernel_complexity` of the eigenvalues of `G / n`, and `noise_std` the
    (sub-Gaussian) standard deviation of the label noise per output coordinate. Apply per
    coordinate for vector labels with the kernel `K I_d`.

    Args:
      eigvals: `[n]` eigenvalues of the Gram matrix `G` (not normalised).
      noise_std: label-noise standard deviation.
      eta: the GD step size.
      max_steps: returned when the condition never triggers below it.

    Returns:
      The stopping step (a Python float, found by bisection over real `k`).

    Examples:
      >>> import numpy as np
      >>> noisy, clean = (rwy_stopping_step(np.ones(10), noise_std=s, eta=1.0)
      ...                 for s in (1.0, 0.01))
      >>> bool(noisy < clean)  # more label noise stops earlier
      True
    """
    lam = np.asarray(eigvals, np.float64) / len(eigvals)

    def crossed(k: float) -> bool:
        eta_k = k * eta
        r = math.sqrt(np.mean(np.minimum(lam, 1.0 / eta_k)))
        return r > 1.0 / (2.0 * math.e * noise_std * eta_k)

    if crossed(1.0):
        return 0.0
    if not crossed(max_steps):
        return float(max_steps)
    lo, hi = 1.0, float(max_steps)  # crossed(lo) is False, crossed(hi) is True
    while hi / lo > 1.0 + 1e-6:
        mid = math.sqrt(lo * hi)
        if crossed(mid):
            hi = mid
        else:
            lo = mid
    return lo


@dataclasses.dataclass(frozen=True)
class GDRecord:
    """Output of `gd_train`: the steps recorded and the network's predictions there."""

    steps: np.ndarray  # [K]
    predictions: np.ndarray  # [K, B, d] at the evaluation inputs
    weight_change: np.ndarray  # [K] ||W_k - W_0||_F / ||W_0||_F
    train_mse: np.ndarray  # [K] (1/n) sum_j ||f_k(u_j) - y_j||^2


def gd_train(
    net: TwoLayerReLU,
    u_train: Array,
    y_train: Array,
    u_eval: Array,
    *,
    eta: float,
    record_steps: Sequence[int],
) -> GDRecord:
    """Full-batch GD on the hidden layer of `net` with loss `(1/2n) sum_j ||f(u_j) - y_j||^2`.

    `W_{k+1} = W_k - eta grad_W loss(W_k)`; returns predictions at `u_eval` `[B, p]` (and the
    relative weight movement and training MSE) after each step count in `record_steps`
    (increasing, 0 allowed).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> net = TwoLayerReLU.init(jax.random.key(0), width=16, in_dim=2, out_dim=1)
      >>> u = jnp.array([[1.0, 0.0], [0.0, 1.0]])
      >>> rec = gd_train(net, u, jnp.array([[1.0], [-1.0]]), u, eta=0.5, record_steps=[0, 20])
      >>> rec.predictions.shape, bool(rec.train_mse[1] < rec.train_mse[0])
      ((2, 2, 1), True)
    """
    record_steps = [int(s) for s in record_steps]
    if any(b <= a for a, b in zip(record_steps, record_steps[1:], strict=False)) or (
        record_steps and record_steps[0] < 0
    ):
        raise ValueError(f"record_steps must be increasing and nonnegative, got {record_steps}")
    n = u_train.shape[0]

    def loss(w):
        r = net.apply(w, u_train) - y_train
        return 0.5 * jnp.sum(r**2) / n

    grad = jax.grad(loss)

    @jax.jit
    def advance(w, num):
        return jax.lax.fori_loop(0, num, lambda _, w: w - eta * grad(w), w)

    @jax.jit
    def measure(w):
        change = jnp.linalg.norm(w - net.w) / jnp.linalg.norm(net.w)
        return net.apply(w, u_eval), change, 2.0 * loss(w)

    w, done = net.w, 0
    preds, changes, mses = [], [], []
    for step in record_steps:
        w = advance(w, step - done)
        done = step
        p, c, m = measure(w)
        preds.append(np.asarray(p))
        changes.append(float(c))
        mses.append(float(m))
    return GDRecord(np.asarray(record_steps), np.stack(preds), np.asarray(changes),
                    np.asarray(mses))
