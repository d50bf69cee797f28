"""Per-example importance scores and pruning by score.

Scores from *Deep Learning on a Data Diet* (Paul, Ganguli, Dziugaite 2021: EL2N, GraNd), example
forgetting (Toneva et al. 2019), Variance of Gradients (Agarwal, D'souza, Hooker 2022), area under
the margin (Pleiss et al. 2020) and dataset cartography (Swayamdipta et al. 2020), plus the
selection rules used to prune a dataset with them.

Conventions: a batch has B examples; `logits` are [B, K] pre-softmax outputs; `labels` are integer
class indices [B] in [0, K). Shapes and dtypes are checked while tracing (`ValueError`, eagerly and
under `jit` alike). Label values are checked only under `scorejax.checked` (a checkify check that
then raises eagerly and under `jit`); without it nothing is read back to the host, `cross_entropy`,
`el2n`, `margin` (so AUM) and `grand` are NaN for an example whose label is outside [0, K), and
the other scores of such an example are unspecified. Every score is a pure function, works under
`jax.jit` and `jax.vmap`, and is embarrassingly parallel over examples: `data_parallel` runs any
of them sharded over the `data` mesh axis, and `scores_by_id` maps scores back to the dataset
order through stable example ids.

GraNd is computed exactly and never quadratically in B (the public data-diet code takes `jacrev`
of the batch loss vector: O(B^2) backward work and a [B, P] Jacobian). `grand(method="vmap")` is
`vmap(grad)` in memory-bounded chunks; `grand(method="ghost")` obtains each Dense/Conv layer's
per-example gradient norm from the layer's input and output cotangent (Goodfellow 2015; Li et al.
2021, "ghost clipping"; Bu et al. 2022, mixed ghost clipping) and never builds a per-example
gradient of the model.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify
from jax.sharding import Mesh, PartitionSpec

PyTree = Any

# --------------------------------------------------------------------------------------------
# Losses and forward-pass scores
# --------------------------------------------------------------------------------------------


def _labels_in_range(labels: jnp.ndarray, num_classes: int) -> jnp.ndarray:
    """[B] bool: label in [0, K). Also a value check, on under `scorejax.checked`."""
    valid = (labels >= 0) & (labels < num_classes)
    checkify.debug_check(
        jnp.all(valid),
        f"labels must be class indices in [0, {num_classes}); got values in [{{low}}, {{high}}]",
        low=jnp.min(labels, initial=0),
        high=jnp.max(labels, initial=0),
    )
    return valid


def _check_logits_labels(logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
    """Trace-time shape/dtype checks; returns [B] bool, label in [0, K) (checked when enabled)."""
    if logits.ndim != 2:
        raise ValueError(f"logits must be [B, K], got shape {logits.shape}")
    if labels.shape != logits.shape[:1]:
        raise ValueError(f"labels must be [B]={logits.shape[:1]}, got shape {labels.shape}")
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
    return _labels_in_range(labels, logits.shape[-1])


def cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
    """Per-example softmax cross-entropy l_i = -log softmax(z_i)[y_i] (nats).

    Args:
      logits: [B, K]. labels: [B] integers in [0, K).
    Returns:
      [B] losses; NaN where a label is outside [0, K) (a value check under `scorejax.checked`).
    """
    valid = _check_logits_labels(logits, labels)
    log_p = jax.nn.log_softmax(logits, axis=-1)
    loss = -jnp.take_along_axis(log_p, labels[:, None], axis=-1)[:, 0]
    return jnp.where(valid, loss, jnp.nan)


def el2n(logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
    """EL2N score ||softmax(z_i) - onehot(y_i)||_2 (Data Diet, Def. 2.3), in [0, sqrt(2)].

    For one model; the paper's score is its mean over independently trained models
    (`mean_over_models`). It equals the norm of d l_i / d z_i, the cross-entropy gradient with
    respect to the logits.

    Args:
      logits: [B, K]. labels: [B] integers in [0, K).
    Returns:
      [B] scores; NaN where a label is outside [0, K) (a value check under `scorejax.checked`).
    """
    valid = _check_logits_labels(logits, labels)
    p = jax.nn.softmax(logits, axis=-1)
    onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=p.dtype)
    return jnp.where(valid, jnp.linalg.norm(p - onehot, axis=-1), jnp.nan)


def margin(logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
    """Logit margin M_i = z_{i,y_i} - max_{k != y_i} z_{i,k} (Pleiss et al. 2020). [B, K] -> [B].

    NaN where a label is outside [0, K) (a value check under `scorejax.checked`).
    """
    valid = _check_logits_labels(logits, labels)
    true = jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
    others = jnp.where(jax.nn.one_hot(labels, logits.shape[-1], dtype=bool), -jnp.inf, logits)
    return jnp.where(valid, true - jnp.max(others, axis=-1), jnp.nan)


def input_norm(x: jnp.ndarray) -> jnp.ndarray:
    """||x_i||_2 over all non-batch axes: [B, ...] -> [B]. Kirsch's (2023) baseline score."""
    return jnp.sqrt(jnp.sum(jnp.square(x.reshape(x.shape[0], -1)), axis=-1))


# --------------------------------------------------------------------------------------------
# Per-example gradient norms
# --------------------------------------------------------------------------------------------


def _chunked_vmap(fn: Callable[[Any], Any], batch: PyTree, chunk_size: int | None) -> Any:
    """vmap `fn` over the leading axis of `batch`, `chunk_size` examples at a time (lax.map)."""
    leaves = jax.tree.leaves(batch)
    if not leaves:
        raise ValueError("empty batch")
    n = leaves[0].shape[0]
    if any(leaf.shape[:1] != (n,) for leaf in leaves):
        raise ValueError(f"batch leaves disagree on the batch size: {[x.shape for x in leaves]}")
    if chunk_size is None or chunk_size >= n:
        return jax.vmap(fn)(batch)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    num_chunks = -(-n // chunk_size)
    pad = num_chunks * chunk_size - n

    def to_chunks(leaf):
        # Pad with copies of the first example (zeros might be outside the model's domain).
        leaf = jnp.concatenate([leaf, jnp.repeat(leaf[:1], pad, axis=0)], axis=0)
        return leaf.reshape(num_chunks, chunk_size, *leaf.shape[1:])

    out = jax.lax.map(jax.vmap(fn), jax.tree.map(to_chunks, batch))
    return jax.tree.map(lambda y: y.reshape(num_chunks * chunk_size, *y.shape[2:])[:n], out)


def _sum_squares(tree: PyTree) -> jnp.ndarray:
    leaves = jax.tree.leaves(tree)
    if not leaves:
        return jnp.zeros(())
    return sum(jnp.sum(jnp.square(x)) for x in leaves)


def per_example_grad_norms(
    loss_fn: Callable[[PyTree, PyTree], jnp.ndarray],
    params: PyTree,
    batch: PyTree,
    *,
    chunk_size: int | None = 32,
) -> jnp.ndarray:
    """||grad_params loss_fn(params, example_i)||_2 for every example of `batch`, by chunked vmap.

    Exact for any per-example loss. Memory is bounded by chunk_size x |params| (the per-example
    gradients of one chunk), never B x |params|; work is linear in B.

    Args:
      loss_fn: (params, example) -> scalar loss, `example` being one row of `batch`.
      params: pytree of parameters to differentiate.
      batch: pytree whose leaves share a leading batch axis B.
      chunk_size: examples per vmapped chunk; None vmaps the whole batch at once.
    Returns:
      [B] gradient norms (the units of the loss per unit parameter).
    """
    grad_fn = jax.grad(loss_fn)
    return jnp.sqrt(_chunked_vmap(lambda ex: _sum_squares(grad_fn(params, ex)), batch, chunk_size))


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


def _key_names(keypath: tuple[Any, ...]) -> tuple[str, ...]:
    names = []
    for k in keypath:
        if isinstance(k, jax.tree_util.DictKey):
            names.append(str(k.key))
        elif isinstance(k, jax.tree_util.GetAttrKey):
            names.append(k.name)
        else:
            names.append(str(getattr(k, "idx", k)))
    return tuple(names)


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


def _check_mask(params: PyTree, mask: PyTree | None) -> list[bool]:
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    if mask is None:
        return [True] * len(leaves)
    mask_leaves = jax.tree_util.tree_flatten_with_path(mask)[0]
    if [_key_names(k) for k, _ in leaves] != [_key_names(k) for k, _ in mask_leaves]:
        raise ValueError("mask must be a pytree of booleans with the same structure as params")
    return [bool(m) for _, m in mask_leaves]


def grand(
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
    """GraNd for one model: ||grad_w l(w; x_i, y_i)||_2 per example (Data Diet, Def. 2.1).

    l is the softmax cross-entropy of `model.apply({'params': params, **model_state}, x_i[None],
    **apply_kwargs)` against y_i; the gradient is over every leaf of `params` (the trainable
    collection), or over the leaves where `mask` is True. Each example is run on its own (a batch
    of one, vmapped), so the score never depends on batch-mates; models with BatchNorm must be
    applied in evaluation mode (`apply_kwargs={'train': False}`,
    `model_state={'batch_stats': ...}`).

    method="vmap": per-example gradients by `vmap(grad)`, `chunk_size` examples at a time.
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
    """
    if method not in ("ghost", "vmap"):
        raise ValueError(f"method must be 'ghost' or 'vmap', got {method!r}")
    if rule not in ("mixed", "gram"):
        raise ValueError(f"rule must be 'mixed' or 'gram', got {rule!r}")
    if x.shape[:1] != y.shape:
        raise ValueError(f"x has batch {x.shape[:1]} but y has shape {y.shape}")
    if not jnp.issubdtype(y.dtype, jnp.integer):
        raise ValueError(f"y must be integer class indices, got dtype {y.dtype}")
    state = dict(model_state or {})
    if "params" in state:
        raise ValueError("pass the 'params' collection as params, not inside model_state")
    kwargs = dict(apply_kwargs or {})
    path_leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    names = [_key_names(k) for k, _ in path_leaves]
    leaves = [leaf for _, leaf in path_leaves]
    selected = _check_mask(params, mask)

    def logits_fn(full_leaves, xi):
        variables = {"params": jax.tree.unflatten(treedef, full_leaves), **state}
        return model.apply(variables, xi[None], **kwargs)

    def loss_of(full_leaves, xi, yi):
        return cross_entropy(logits_fn(full_leaves, xi), yi[None])[0]

    layers = _discover_layers(logits_fn, leaves, names, selected, x[0]) if method == "ghost" else []
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

    norms = jnp.sqrt(_chunked_vmap(example_sq_norm, (x, y), chunk_size))
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


# --------------------------------------------------------------------------------------------
# Scores over training: VoG, forgetting, area under the margin, cartography
# --------------------------------------------------------------------------------------------


def logit_input_grads(
    apply_fn: Callable[[PyTree, jnp.ndarray], jnp.ndarray],
    params: PyTree,
    x: jnp.ndarray,
    labels: jnp.ndarray,
) -> jnp.ndarray:
    """d z_{y_i}(x_i) / d x_i: gradient of the label's pre-softmax logit w.r.t. the input (VoG's S).

    Each example is differentiated on its own (vmap over batches of one).

    Args:
      apply_fn: (params, x [b, ...]) -> logits [b, K].
      params: model parameters (any pytree apply_fn accepts).
      x: [B, ...] inputs. labels: [B] integers (true labels for training data, predicted labels
        for test data, as in Agarwal et al.).
    Returns:
      [B, ...] gradients shaped like x.
    """
    if x.shape[:1] != labels.shape:
        raise ValueError(f"x has batch {x.shape[:1]} but labels has shape {labels.shape}")

    def one(xi, yi):
        return jax.grad(lambda v: apply_fn(params, v[None])[0, yi])(xi)

    return jax.vmap(one)(x, labels)


# A std within this many ulps of the group mean is rounding, not spread: XLA may compute a score
# twice (in two fusions, summed in different orders), so even a one-example group can show one.
_ZERO_SPREAD_ULPS = 16


def _z_score(value: jnp.ndarray, mean: jnp.ndarray, std: jnp.ndarray, count) -> jnp.ndarray:
    """z = (value - mean) / std within a group of `count` examples.

    z = 0 where the group has one example or std <= 16 eps |mean| (all its values equal up to
    rounding): each example then sits at its group's mean, instead of 0 / 0.
    """
    eps = jnp.finfo(jnp.result_type(value)).eps
    spread = (count > 1) & (std > _ZERO_SPREAD_ULPS * eps * jnp.abs(mean))
    return jnp.where(spread, (value - mean) / jnp.where(spread, std, 1.0), 0.0)


def _segment_stats(values: jnp.ndarray, labels: jnp.ndarray, num_classes: int):
    """Per-example (mean, population std, count) of its label's group: three [B] arrays."""
    count = jax.ops.segment_sum(jnp.ones_like(values), labels, num_classes)
    mean = jax.ops.segment_sum(values, labels, num_classes) / jnp.maximum(count, 1)
    dev = values - mean[labels]
    var = jax.ops.segment_sum(dev * dev, labels, num_classes) / jnp.maximum(count, 1)
    return mean[labels], jnp.sqrt(var)[labels], count[labels]


def _num_classes(labels: jnp.ndarray, num_classes: int | None) -> int:
    if num_classes is not None:
        return num_classes
    if isinstance(labels, jax.core.Tracer):
        raise ValueError("pass num_classes when labels are traced (under jit/vmap)")
    return int(np.max(np.asarray(labels))) + 1


def _check_vog_args(normalize: str | None, statistic: str) -> None:
    if normalize not in ("class", "dataset", None):
        raise ValueError(f"normalize must be 'class', 'dataset' or None, got {normalize!r}")
    if statistic not in ("std", "var"):
        raise ValueError(f"statistic must be 'std' or 'var', got {statistic!r}")


def _channel_mean(g: jnp.ndarray, channel_axis: int | None, lead: int) -> jnp.ndarray:
    """Average one example's gradient over its channel axis; `lead` axes precede the example's."""
    if channel_axis is None:
        return g
    return jnp.mean(g, axis=channel_axis if channel_axis < 0 else channel_axis + lead)


def _vog_from_variance(
    var: jnp.ndarray,
    labels: jnp.ndarray,
    normalize: str | None,
    num_classes: int | None,
    statistic: str,
) -> jnp.ndarray:
    """Pixel mean of the per-pixel spread [B, ...] over checkpoints, then normalisation."""
    spread = var.reshape(var.shape[0], -1)
    if statistic == "std":
        spread = jnp.sqrt(spread)
    score = jnp.mean(spread, axis=-1)
    if normalize == "dataset":
        return _z_score(score, jnp.mean(score), jnp.std(score), score.shape[0])
    if normalize == "class":
        mean, std, count = _segment_stats(score, labels, _num_classes(labels, num_classes))
        return _z_score(score, mean, std, count)
    return score


def vog(
    input_grads: jnp.ndarray,
    labels: jnp.ndarray,
    *,
    normalize: str | None = "class",
    num_classes: int | None = None,
    channel_axis: int | None = None,
    statistic: str = "std",
) -> jnp.ndarray:
    """Variance of Gradients (Agarwal, D'souza, Hooker 2022) from K checkpoints' input gradients.

    With S_t the input gradient at checkpoint t (`logit_input_grads`), per pixel p
        VoG_p = sqrt( (1/K) sum_t (S_{t,p} - mu_p)^2 ),  mu_p = (1/K) sum_t S_{t,p},
    and VoG = mean_p VoG_p (the official code: population std over checkpoints, then the pixel
    mean). statistic="var" drops the square root (Anand et al. 2023, Alg. 1). Colour images are
    first averaged over `channel_axis` (an axis of one example, e.g. -1), as the official code
    does. normalize="class" z-scores within each label's examples, "dataset" over all examples
    (both with the population std), None returns the raw value. A group with one example, or
    whose std is at rounding level (<= 16 eps |mean|: equal scores), gets z = 0 instead of 0 / 0
    (the official code's NaN): each of its examples sits at the group's mean.
    `VoGState` computes the same score checkpoint by checkpoint without storing the K gradients.

    Args:
      input_grads: [K, B, ...] gradients at K checkpoints.
      labels: [B] integers (used by normalize="class").
      normalize: "class", "dataset" or None.
      num_classes: number of classes (needed under jit with normalize="class").
      channel_axis: axis of a single example's gradient to average first, or None.
      statistic: "std" or "var".
    Returns:
      [B] scores.
    """
    if input_grads.ndim < 2 or input_grads.shape[1:2] != labels.shape:
        raise ValueError(
            f"input_grads must be [K, B, ...] with B={labels.shape}, got {input_grads.shape}"
        )
    _check_vog_args(normalize, statistic)
    g = _channel_mean(input_grads, channel_axis, lead=2)
    return _vog_from_variance(jnp.var(g, axis=0), labels, normalize, num_classes, statistic)


class VoGState(NamedTuple):
    """Running per-pixel mean and sum of squared deviations of input gradients (Welford)."""

    count: jnp.ndarray  # scalar, checkpoints seen
    mean: jnp.ndarray  # [B, ...]
    m2: jnp.ndarray  # [B, ...]

    @classmethod
    def create(cls, shape: Sequence[int], dtype: Any = jnp.float32) -> VoGState:
        """Empty statistics for gradients of shape [B, ...] (after any channel averaging)."""
        zeros = jnp.zeros(tuple(shape), dtype)
        return cls(jnp.zeros((), dtype), zeros, zeros)

    def update(self, grads: jnp.ndarray, *, channel_axis: int | None = None) -> VoGState:
        """Add one checkpoint's input gradients [B, ...] (Welford's update)."""
        g = _channel_mean(grads, channel_axis, lead=1).astype(self.mean.dtype)
        if g.shape != self.mean.shape:
            raise ValueError(f"gradients of shape {g.shape} for statistics {self.mean.shape}")
        count = self.count + 1
        delta = g - self.mean
        mean = self.mean + delta / count
        return VoGState(count, mean, self.m2 + delta * (g - mean))

    def score(
        self,
        labels: jnp.ndarray,
        *,
        normalize: str | None = "class",
        num_classes: int | None = None,
        statistic: str = "std",
    ) -> jnp.ndarray:
        """`vog` of the checkpoints added so far: [B] scores."""
        _check_vog_args(normalize, statistic)
        var = self.m2 / jnp.maximum(self.count, 1)
        return _vog_from_variance(var, labels, normalize, num_classes, statistic)


def forgetting_events(
    correct_history: jnp.ndarray,
    *,
    presented: jnp.ndarray | None = None,
    never_learned: float = float("inf"),
) -> jnp.ndarray:
    """Number of forgetting events per example (Toneva et al. 2019; data_diet `forgetting.py`).

    acc_i^(s) is whether example i was classified correctly at its s-th presentation (in the
    original: the training minibatch's pre-update forward pass). An event is a transition
    acc^(s) = 1 -> acc^(s+1) = 0 between consecutive presentations; the state before the first
    presentation counts as "incorrect", so a first presentation is never an event. Examples never
    classified correctly get `never_learned`: +inf as in data_diet (the default), or the number of
    presentations as in Toneva et al.'s repository.

    Args:
      correct_history: [S, B] booleans, step by step.
      presented: optional [S, B] booleans; steps where an example was not presented are skipped.
      never_learned: score for examples never correct.
    Returns:
      [B] float scores.
    """
    if correct_history.ndim != 2:
        raise ValueError(f"correct_history must be [S, B], got shape {correct_history.shape}")
    if presented is not None and presented.shape != correct_history.shape:
        raise ValueError(
            f"presented must have shape {correct_history.shape}, got {presented.shape}"
        )
    state = forgetting_init(correct_history.shape[1])
    ids = jnp.arange(correct_history.shape[1])
    pres = jnp.ones_like(correct_history, bool) if presented is None else presented

    def step(st, row):
        correct, shown = row
        return forgetting_update(st, ids, correct, shown), None

    state, _ = jax.lax.scan(step, state, (correct_history.astype(bool), pres.astype(bool)))
    return forgetting_scores(state, never_learned=never_learned)


class ForgettingState(NamedTuple):
    """Running forgetting statistics for N examples, updated in-graph during training."""

    prev_correct: jnp.ndarray  # [N] bool, correctness at the last presentation
    events: jnp.ndarray  # [N] int32
    learned: jnp.ndarray  # [N] bool, ever classified correctly


def forgetting_init(num_examples: int) -> ForgettingState:
    """Statistics before any presentation: nothing correct, no events."""
    return ForgettingState(
        jnp.zeros(num_examples, bool),
        jnp.zeros(num_examples, jnp.int32),
        jnp.zeros(num_examples, bool),
    )


def forgetting_update(
    state: ForgettingState,
    ids: jnp.ndarray,
    correct: jnp.ndarray,
    valid: jnp.ndarray | None = None,
) -> ForgettingState:
    """Record one minibatch: examples `ids` [b] (distinct) were `correct` [b].

    `valid` [b] marks real rows; padded rows (False) change nothing.
    """
    correct = correct.astype(bool)
    valid = jnp.ones_like(correct) if valid is None else valid.astype(bool)
    # Padded rows scatter out of range and are dropped, so pads may repeat any id.
    target = jnp.where(valid, ids, state.events.shape[0])
    forgot = state.prev_correct[ids] & ~correct & valid
    return ForgettingState(
        state.prev_correct.at[target].set(correct, mode="drop"),
        state.events.at[target].add(forgot.astype(jnp.int32), mode="drop"),
        state.learned.at[target].set(state.learned[ids] | correct, mode="drop"),
    )


def forgetting_scores(
    state: ForgettingState, *, never_learned: float = float("inf")
) -> jnp.ndarray:
    """[N] forgetting counts, `never_learned` for examples never classified correctly."""
    return jnp.where(state.learned, state.events.astype(jnp.float32), never_learned)


def area_under_margin(logits_history: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
    """AUM (Pleiss et al. 2020): (1/T) sum_t [z^(t)_{y} - max_{k != y} z^(t)_k] over T records.

    Args:
      logits_history: [T, B, K] logits recorded during training. labels: [B] integers.
    Returns:
      [B] scores (low or negative values flag likely mislabelled examples).
    """
    if logits_history.ndim != 3:
        raise ValueError(f"logits_history must be [T, B, K], got shape {logits_history.shape}")
    return jnp.mean(jax.vmap(margin, in_axes=(0, None))(logits_history, labels), axis=0)


class Cartography(NamedTuple):
    """Dataset-cartography coordinates (Swayamdipta et al. 2020), each [B]."""

    confidence: jnp.ndarray  # mean over epochs of p(y_i | x_i)
    variability: jnp.ndarray  # population std over epochs of p(y_i | x_i)
    correctness: jnp.ndarray  # fraction of epochs with argmax = y_i


def cartography(logits_history: jnp.ndarray, labels: jnp.ndarray) -> Cartography:
    """Confidence, variability and correctness from [E, B, K] logits at E epoch checkpoints.

    mu_i = (1/E) sum_e p_e(y_i|x_i),  sigma_i = sqrt((1/E) sum_e (p_e(y_i|x_i) - mu_i)^2).
    """
    if logits_history.ndim != 3:
        raise ValueError(f"logits_history must be [E, B, K], got shape {logits_history.shape}")
    _check_logits_labels(logits_history[0], labels)
    p = jax.nn.softmax(logits_history, axis=-1)
    p_true = jnp.take_along_axis(p, labels[None, :, None], axis=-1)[..., 0]
    correct = jnp.argmax(logits_history, axis=-1) == labels[None]
    return Cartography(jnp.mean(p_true, 0), jnp.std(p_true, 0), jnp.mean(correct, 0))


class DynamicsState(NamedTuple):
    """Running statistics of logits over training for AUM and cartography, per example [B].

    Feed it the logits of the same examples at successive records (epochs); `aum()` and
    `cartography()` then equal `area_under_margin` and `cartography` of the stacked history.
    """

    count: jnp.ndarray  # scalar, records seen
    margin_sum: jnp.ndarray  # sum_t M^(t)
    p_mean: jnp.ndarray  # running mean of p_t(y | x)
    p_m2: jnp.ndarray  # running sum of squared deviations of p_t(y | x) (Welford)
    correct_sum: jnp.ndarray  # number of records with argmax = y

    @classmethod
    def create(cls, num_examples: int) -> DynamicsState:
        zeros = jnp.zeros(num_examples, jnp.float32)
        return cls(jnp.zeros((), jnp.float32), zeros, zeros, zeros, zeros)

    def update(self, logits: jnp.ndarray, labels: jnp.ndarray) -> DynamicsState:
        """Add one record of logits [B, K]."""
        _check_logits_labels(logits, labels)
        p = jnp.take_along_axis(jax.nn.softmax(logits, axis=-1), labels[:, None], axis=-1)[:, 0]
        count = self.count + 1
        delta = p - self.p_mean
        p_mean = self.p_mean + delta / count
        return DynamicsState(
            count,
            self.margin_sum + margin(logits, labels),
            p_mean,
            self.p_m2 + delta * (p - p_mean),
            self.correct_sum + (jnp.argmax(logits, axis=-1) == labels),
        )

    def aum(self) -> jnp.ndarray:
        """Area under the margin over the records so far: [B]."""
        return self.margin_sum / jnp.maximum(self.count, 1)

    def cartography(self) -> Cartography:
        """Confidence, variability, correctness over the records so far."""
        n = jnp.maximum(self.count, 1)
        return Cartography(self.p_mean, jnp.sqrt(self.p_m2 / n), self.correct_sum / n)


def flip_labels(
    key: jax.Array, labels: jnp.ndarray, fraction: float, num_classes: int
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Label noise: exactly round(fraction * N) labels, chosen uniformly, moved to another class.

    Each chosen label y becomes (y + u) mod K with u uniform in {1, ..., K-1}, so every chosen
    label really changes (unlike data_diet's permutation among the chosen examples).

    Returns:
      (noisy labels [N], flipped mask [N] bool).
    """
    n = labels.shape[0]
    n_flip = int(math.floor(fraction * n + 0.5))
    k_choose, k_shift = jax.random.split(key)
    flipped = jnp.zeros(n, bool).at[jax.random.permutation(k_choose, n)[:n_flip]].set(True)
    shift = jax.random.randint(k_shift, (n,), 1, num_classes)
    return jnp.where(flipped, (labels + shift) % num_classes, labels).astype(labels.dtype), flipped


# --------------------------------------------------------------------------------------------
# Several models, sharding, example ids
# --------------------------------------------------------------------------------------------


def mean_over_models(
    score_fn: Callable[..., jnp.ndarray], stacked_params: PyTree, *args: Any, **kwargs: Any
) -> jnp.ndarray:
    """E_w[score]: mean of `score_fn(params, *args, **kwargs)` over models, in one vmapped call.

    `stacked_params` holds R independently initialised/trained models along a new leading axis
    (e.g. from `jax.vmap(model.init)(keys, x)`); `args` are shared by all models. The mean is of
    the per-model scores (for GraNd: mean of norms, not norm of the mean gradient).

    Returns:
      the [B, ...] score averaged over the R models.
    """
    per_model = jax.vmap(lambda p: score_fn(p, *args, **kwargs))(stacked_params)
    return jnp.mean(per_model, axis=0)


def data_parallel(
    score_fn: Callable[..., Any], mesh: Mesh, *, num_replicated: int = 1, axis: str = "data"
) -> Callable[..., Any]:
    """Run a per-example score function with its batch sharded over the `axis` of `mesh`.

    `score_fn(*replicated, *batched)`: the first `num_replicated` arguments (parameters) are
    replicated; the rest are batches split along their leading axis; outputs are per-example
    arrays with a leading batch axis. Each device scores its own shard (chunking, if any, stays
    local) and only the scores are gathered, so results equal the single-device call. The batch
    size must be divisible by the number of devices on `axis`.

    Returns:
      a jitted function with the same signature.
    """

    def wrapped(*args):
        specs = tuple(
            PartitionSpec() if i < num_replicated else PartitionSpec(axis) for i in range(len(args))
        )
        sharded = jax.shard_map(
            score_fn, mesh=mesh, in_specs=specs, out_specs=PartitionSpec(axis), check_vma=False
        )
        return sharded(*args)

    return jax.jit(wrapped)


def scores_by_id(ids: jnp.ndarray, scores: jnp.ndarray, num_examples: int) -> jnp.ndarray:
    """Scatter scores computed in any order (shuffled, sharded, batched) to dataset order.

    Args:
      ids: [M] stable integer example ids in [0, num_examples).
      scores: [M, ...] the scores of those examples.
      num_examples: N.
    Returns:
      [N, ...] with row `id` holding that example's score; rows never seen hold NaN. Outside jit,
      duplicate or out-of-range ids raise.
    """
    if ids.shape != scores.shape[:1]:
        raise ValueError(f"ids {ids.shape} and scores {scores.shape} disagree on the batch size")
    if not isinstance(ids, jax.core.Tracer):
        host = np.asarray(ids)
        if host.size and (host.min() < 0 or host.max() >= num_examples):
            raise ValueError(f"ids must lie in [0, {num_examples})")
        if np.unique(host).size != host.size:
            raise ValueError("ids contain duplicates")
    dtype = jnp.result_type(scores.dtype, jnp.float32)
    out = jnp.full((num_examples, *scores.shape[1:]), jnp.nan, dtype)
    return out.at[ids].set(scores.astype(dtype))


# --------------------------------------------------------------------------------------------
# Pruning
# --------------------------------------------------------------------------------------------

PRUNE_STRATEGIES = ("hardest", "easiest", "random", "offset")


def _allocate(total: int | jnp.ndarray, sizes: jnp.ndarray) -> jnp.ndarray:
    """Split `total` over groups proportionally to `sizes` (largest remainder, ties by index)."""
    n = jnp.sum(sizes)
    base = (total * sizes) // n
    remainder = (total * sizes) % n
    extra = total - jnp.sum(base)
    order = jnp.argsort(-remainder, stable=True)
    rank = jnp.zeros_like(order).at[order].set(jnp.arange(order.size))
    return base + (rank < extra).astype(base.dtype)


def prune(
    scores: jnp.ndarray,
    keep_fraction: float,
    strategy: str = "hardest",
    *,
    offset: int = 0,
    key: jax.Array | None = None,
    labels: jnp.ndarray | None = None,
    num_classes: int | None = None,
    class_balanced: bool = False,
) -> jnp.ndarray:
    """Indices of the examples to keep, n_keep = round(keep_fraction * N) of them, ascending.

    Strategies (data_diet `subset_train_idxs`): "hardest" keeps the highest scores (the paper's
    keep_max_scores: prune the easy examples), "easiest" the lowest, "random" a uniformly random
    subset drawn with `key`, and "offset" the highest scores after skipping the `offset` highest
    (a sliding window for noisy labels; data_diet's `offset` argument is N - n_keep - this one).
    Ties are broken by the lower index, so the result is deterministic.

    class_balanced=True keeps each class's share of the dataset: class c (n_c examples) gets
    n_keep * n_c / N slots (largest-remainder rounding, so the total is exact) filled by the same
    rule within the class; with "offset", each class skips its proportional share of `offset`.

    Args:
      scores: [N] scores (NaN is not allowed). keep_fraction: in (0, 1].
      strategy: one of PRUNE_STRATEGIES.
      offset: number of highest scores skipped by "offset".
      key: PRNG key for "random".
      labels: [N] integers, needed for class_balanced.
      num_classes: needed with class_balanced under jit.
      class_balanced: keep class proportions.
    Returns:
      [n_keep] int32 indices into `scores`, ascending.
    """
    if scores.ndim != 1:
        raise ValueError(f"scores must be [N], got shape {scores.shape}")
    if strategy not in PRUNE_STRATEGIES:
        raise ValueError(f"strategy must be one of {PRUNE_STRATEGIES}, got {strategy!r}")
    n = scores.shape[0]
    if not 0.0 < keep_fraction <= 1.0:
        raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
    n_keep = max(1, int(math.floor(keep_fraction * n + 0.5)))
    skip = offset if strategy == "offset" else 0
    if skip < 0 or skip + n_keep > n:
        raise ValueError(f"offset {offset} + kept {n_keep} exceeds the {n} examples")
    if not isinstance(scores, jax.core.Tracer) and bool(jnp.any(jnp.isnan(scores))):
        raise ValueError("scores contain NaN")
    if strategy == "random":
        if key is None:
            raise ValueError("strategy='random' needs a PRNG key")
        priority = jax.random.uniform(key, (n,))
    elif strategy == "easiest":
        priority = -scores
    else:
        priority = scores
    # Rank by priority, highest first; ties go to the lower index (stable sort).
    order = jnp.argsort(-priority, stable=True)
    if class_balanced:
        if labels is None or labels.shape != (n,):
            raise ValueError("class_balanced needs labels of shape [N]")
        k = _num_classes(labels, num_classes)
        sizes = jnp.zeros(k, jnp.int32).at[labels].add(1)
        quota = _allocate(n_keep, sizes)
        skips = jnp.minimum(_allocate(skip, sizes), sizes - quota)
        sorted_labels = labels[order]
        onehot = jax.nn.one_hot(sorted_labels, k, dtype=jnp.int32)
        rank_in_class = jnp.sum((jnp.cumsum(onehot, axis=0) - 1) * onehot, axis=1)
        lo, hi = skips[sorted_labels], (skips + quota)[sorted_labels]
        keep_sorted = (rank_in_class >= lo) & (rank_in_class < hi)
    else:
        pos = jnp.arange(n)
        keep_sorted = (pos >= skip) & (pos < skip + n_keep)
    keep = jnp.zeros(n, bool).at[order].set(keep_sorted)
    return jnp.nonzero(keep, size=n_keep)[0].astype(jnp.int32)
