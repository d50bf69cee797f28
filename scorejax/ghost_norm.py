"""GraNd of a flax.linen module by the ghost norm: an adapter beside `importance.grand`.

`flax_grand` obtains each Dense/Conv layer's per-example gradient norm from the layer's input and
output cotangent (Goodfellow 2015; Li et al. 2021, "ghost clipping"; Bu et al. 2022, mixed ghost
clipping) and never builds a per-example gradient of the model. It intercepts the module's
`nn.Dense` and `nn.Conv` calls (`flax.linen.intercept_methods`), so it needs the module itself,
not only an `apply_fn`; `scorejax.importance.grand` is the model-agnostic form and gives the same
norms by `vmap(grad)`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from scorejax.chunked import chunked_vmap
from scorejax.importance import (
    _check_examples,
    _check_mask,
    _key_names,
    _labels_in_range,
    _sum_squares,
    cross_entropy,
    grand,
)

PyTree = Any


@dataclasses.dataclass(frozen=True)
class _Layer:
    """A Dense or Conv call whose parameters get per-example norms from activations."""

    key: str  # '/'-joined module path; also the key of its perturbation
    path: tuple[str, ...]
    module: nn.Module  # unbound clone, used to unfold conv patches
    kernel: bool  # whether the kernel is in the mask
    bias: bool  # whether the bias is in the mask
    out_shape: tuple[int, ...]
    out_dtype: Any


def _is_intercepted_layer(module: nn.Module, method_name: str) -> bool:
    """Dense/Conv calls whose gradient has the plain outer-product form (exact type only)."""
    if method_name != "__call__":
        return False
    if type(module) is nn.Dense:
        return module.dot_general is None and module.dot_general_cls is None
    if type(module) is nn.Conv:
        return (
            module.feature_group_count == 1
            and module.mask is None
            and module.conv_general_dilated is None
            and module.conv_general_dilated_cls is None
        )
    return False


def _conv_patches(module: nn.Conv, a: jnp.ndarray) -> jnp.ndarray:
    """Unfolded input patches U[..., t, p] of a Conv, so that conv(a, W) = U @ W.reshape(p, d).

    Obtained by running the same convolution (padding, strides, dilations) with an identity
    kernel of p = prod(kernel_size) * C_in output features, so every flax padding mode is honoured.
    """
    k = module.kernel_size if isinstance(module.kernel_size, Sequence) else (module.kernel_size,)
    c_in = a.shape[-1]
    p = math.prod(k) * c_in
    eye = jnp.eye(p, dtype=a.dtype).reshape(*k, c_in, p)
    unfold = module.clone(
        parent=None,
        features=p,
        use_bias=False,
        dtype=a.dtype,
        param_dtype=a.dtype,
        precision=jax.lax.Precision.HIGHEST,
    )
    return unfold.apply({"params": {"kernel": eye}}, a)


def _layer_sq_norm(layer: _Layer, a: jnp.ndarray, g: jnp.ndarray, rule: str) -> jnp.ndarray:
    """Squared norm of one example's gradient of one layer, from its input a and output grad g.

    With U [T, p] the (unfolded) inputs at the layer's T output positions and G [T, d] the output
    cotangents, the kernel gradient is U^T G, so
        ||U^T G||_F^2 = <U U^T, G G^T>_F           ("ghost" form, O(T^2 (p + d)))
    and the bias gradient is sum_t G_t. Dense layers on a single position (T = 1) reduce to
    ||a||^2 ||g||^2. rule="mixed" forms U^T G (this one layer, this one example) when that is
    cheaper, T (p + d) >= p d, which is what early conv layers on large images need.
    """
    u = _conv_patches(layer.module, a) if type(layer.module) is nn.Conv else a
    u = u.reshape(-1, u.shape[-1]).astype(g.dtype)
    gm = g.reshape(-1, g.shape[-1])
    total = jnp.zeros((), g.dtype)
    if layer.kernel:
        t, p = u.shape
        d = gm.shape[-1]
        if t == 1:
            total += jnp.sum(jnp.square(u)) * jnp.sum(jnp.square(gm))
        elif rule == "gram" or t * (p + d) < p * d:
            hi = jax.lax.Precision.HIGHEST
            total += jnp.sum(jnp.matmul(u, u.T, precision=hi) * jnp.matmul(gm, gm.T, precision=hi))
        else:
            total += jnp.sum(jnp.square(jnp.matmul(u.T, gm, precision=jax.lax.Precision.HIGHEST)))
    if layer.bias:
        total += jnp.sum(jnp.square(jnp.sum(gm, axis=0)))
    return total


def flax_grand(
    model: nn.Module,
    params: PyTree,
    x: jnp.ndarray,
    y: jnp.ndarray,
    *,
    method: str = "ghost",
    chunk_size: int | None = None,
    mask: PyTree | None = None,
    model_state: Mapping[str, PyTree] | None = None,
    apply_kwargs: Mapping[str, Any] | None = None,
    rule: str = "mixed",
) -> jnp.ndarray:
    """GraNd of a flax module: ||grad_w l(w; x_i, y_i)||_2 per example (Data Diet, Def. 2.1).

    l is the softmax cross-entropy of `model.apply({'params': params, **model_state}, x_i[None],
    **apply_kwargs)` against y_i; the gradient is over every leaf of `params` (the trainable
    collection), or over the leaves where `mask` is True. Each example is run on its own (a batch
    of one, vmapped), so the score never depends on batch-mates; models with BatchNorm must be
    applied in evaluation mode (`apply_kwargs={'train': False}`,
    `model_state={'batch_stats': ...}`).

    method="vmap": `scorejax.importance.grand` of the module's apply function (per-example
      gradients by `vmap(grad)`, `chunk_size` examples at a time).
    method="ghost": per-example norms of every `nn.Dense` and `nn.Conv` layer (exact types, each
      called once per forward pass) from the layer's inputs and output cotangents (see
      `_layer_sq_norm`); the cotangents come from one backward pass to zero perturbations added to
      the layer outputs, with those layers' parameters held constant, so no per-example parameter
      gradient of the model is built. Parameters of any other layer (norm scales, embeddings, shared
      or custom layers) are differentiated by vmap in the same backward pass. rule="gram" uses the
      <UU^T, GG^T> form for every multi-position layer; "mixed" picks the cheaper form per layer.
    Both methods are exact and agree to float rounding. Neither is quadratic in B.

    Args:
      model: a flax.linen module mapping a batch of inputs to logits [B, K].
      params: its 'params' collection.
      x: [B, ...] inputs. y: [B] integer labels in [0, K).
      method: "ghost" or "vmap".
      chunk_size: examples per vmapped chunk (bounds memory); None does all B at once.
      mask: optional pytree of booleans shaped like params (True = included).
      model_state: other variable collections, e.g. {'batch_stats': ...}.
      apply_kwargs: keyword arguments for `model.apply`, e.g. {'train': False}.
      rule: "mixed" or "gram" (ghost method only).
    Returns:
      [B] gradient norms; NaN where a label is outside [0, K) (a value check under
      `scorejax.checked`).

    Examples:
      >>> import flax.linen as nn
      >>> import jax, jax.numpy as jnp
      >>> from scorejax.importance import grand
      >>> model = nn.Dense(3)
      >>> x, y = jnp.asarray([[1.0, 0.0], [0.0, 2.0]]), jnp.asarray([0, 1])
      >>> params = model.init(jax.random.key(0), x)["params"]
      >>> ghost = flax_grand(model, params, x, y)
      >>> by_vmap = grand(lambda p, xb: model.apply({"params": p}, xb), params, x, y)
      >>> print(bool(jnp.allclose(ghost, by_vmap, rtol=1e-5)))
      True
    """
    if method not in ("ghost", "vmap"):
        raise ValueError(f"method must be 'ghost' or 'vmap', got {method!r}")
    if rule not in ("mixed", "gram"):
        raise ValueError(f"rule must be 'mixed' or 'gram', got {rule!r}")
    _check_examples(x, y)
    state = dict(model_state or {})
    if "params" in state:
        raise ValueError("pass the 'params' collection as params, not inside model_state")
    kwargs = dict(apply_kwargs or {})
    if method == "vmap":

        def apply_fn(p: PyTree, xb: jnp.ndarray) -> jnp.ndarray:
            return model.apply({"params": p, **state}, xb, **kwargs)

        return grand(apply_fn, params, x, y, chunk_size=chunk_size, mask=mask)
    path_leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    names = [_key_names(k) for k, _ in path_leaves]
    leaves = [leaf for _, leaf in path_leaves]
    selected = _check_mask(params, mask)

    def logits_fn(full_leaves, xi):
        variables = {"params": jax.tree.unflatten(treedef, full_leaves), **state}
        return model.apply(variables, xi[None], **kwargs)

    def loss_of(full_leaves, xi, yi):
        return cross_entropy(logits_fn(full_leaves, xi), yi[None])[0]

    layers = _discover_layers(logits_fn, leaves, names, selected, x[0])
    # After `_discover_layers`: eval_shape caches its trace, and an earlier trace of the same
    # function would be reused there without running the layer interceptor.
    valid = _labels_in_range(y, jax.eval_shape(logits_fn, leaves, x[0]).shape[-1])
    covered = {n for layer in layers for n in ((*layer.path, "kernel"), (*layer.path, "bias"))}
    diff_idx = [i for i, n in enumerate(names) if selected[i] and n not in covered]
    by_key = {layer.key: layer for layer in layers}

    def example_sq_norm(example):
        xi, yi = example

        def loss(diff_leaves, perturbations):
            full = list(leaves)
            for i, leaf in zip(diff_idx, diff_leaves, strict=True):
                full[i] = leaf
            inputs = {}

            def interceptor(next_fun, args, kw, context):
                key = "/".join(context.module.path)
                if key not in by_key or not _is_intercepted_layer(
                    context.module, context.method_name
                ):
                    return next_fun(*args, **kw)
                inputs[key] = args[0] if args else kw["inputs"]
                return next_fun(*args, **kw) + perturbations[key]

            with nn.intercept_methods(interceptor):
                value = loss_of(full, xi, yi)
            return value, inputs

        perturbations = {layer.key: jnp.zeros(layer.out_shape, layer.out_dtype) for layer in layers}
        (g_diff, g_out), inputs = jax.grad(loss, argnums=(0, 1), has_aux=True)(
            [leaves[i] for i in diff_idx], perturbations
        )
        total = _sum_squares(g_diff)
        for layer in layers:
            total += _layer_sq_norm(layer, inputs[layer.key], g_out[layer.key], rule)
        return total

    norms = jnp.sqrt(chunked_vmap(example_sq_norm, (x, y), chunk_size=chunk_size))
    return jnp.where(valid, norms, jnp.nan)


def _discover_layers(
    logits_fn: Callable[[list, jnp.ndarray], jnp.ndarray],
    leaves: list,
    names: list[tuple[str, ...]],
    selected: list[bool],
    x0: jnp.ndarray,
) -> list[_Layer]:
    """Trace one example abstractly and list the Dense/Conv calls the ghost norm can cover."""
    calls: dict[str, list] = {}

    def interceptor(next_fun, args, kw, context):
        out = next_fun(*args, **kw)
        if _is_intercepted_layer(context.module, context.method_name):
            key = "/".join(context.module.path)
            calls.setdefault(key, []).append((context.module, out.shape, out.dtype))
        return out

    with nn.intercept_methods(interceptor):
        jax.eval_shape(logits_fn, leaves, x0)
    index = {n: i for i, n in enumerate(names)}
    layers = []
    for key, seen in calls.items():
        if len(seen) != 1:  # shared weights: per-call norms do not add up; leave them to vmap
            continue
        module, out_shape, out_dtype = seen[0]
        path = tuple(module.path)
        own = {n[-1] for n in names if n[:-1] == path}
        expected = {"kernel", "bias"} if module.use_bias else {"kernel"}
        if own != expected:
            continue
        use_kernel = selected[index[(*path, "kernel")]]
        use_bias = module.use_bias and selected[index[(*path, "bias")]]
        if not (use_kernel or use_bias):
            continue
        layers.append(
            _Layer(key, path, module.clone(parent=None), use_kernel, use_bias, out_shape, out_dtype)
        )
    return layers
