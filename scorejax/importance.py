"""Per-example importance scores of one model: EL2N, GraNd, margin, input gradients.

Scores from *Deep Learning on a Data Diet* (Paul, Ganguli, Dziugaite 2021: EL2N, GraNd), the logit
margin (Pleiss et al. 2020) and the input gradients that Variance of Gradients (Agarwal, D'souza,
Hooker 2022) is computed from. Scores recorded over training are in `scorejax.vog` (VoG) and
`scorejax.training_dynamics` (forgetting, area under the margin, cartography), selection by score in
`scorejax.pruning`, and GraNd of a flax module by the ghost norm in `scorejax.ghost_norm`.

Conventions: a model is any `apply_fn(params, x) -> logits`; a batch has B examples; `logits` are
[B, K] pre-softmax outputs; `labels` are integer class indices [B] in [0, K). Shapes and dtypes
are checked while tracing (`ValueError`, eagerly and under `jit` alike). Label values are checked
only under `scorejax.checked` (a checkify check that then raises eagerly and under `jit`);
without it nothing is read back to the host, `cross_entropy`, `el2n`, `margin` and `grand` are
NaN for an example whose label is outside [0, K), and the other scores of such an example are
unspecified. Every score is a pure function, works under `jax.jit` and `jax.vmap`, and is
embarrassingly parallel over examples: `scorejax.train.data_parallel` runs any of them sharded
over the `data` mesh axis, and `scores_by_id` maps scores back to the dataset order through
stable example ids.

GraNd is computed exactly and never quadratically in B (the public data-diet code takes `jacrev`
of the batch loss vector: O(B^2) backward work and a [B, P] Jacobian): `grand` is `vmap(grad)` in
memory-bounded chunks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.experimental import checkify

from scorejax.chunked import chunked_vmap

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

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> logits = jnp.log(jnp.asarray([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]]))
      >>> labels = jnp.asarray([0, 2])
      >>> print(cross_entropy(logits, labels))
      [0.3567 1.204 ]
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

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> logits = jnp.log(jnp.asarray([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]]))
      >>> labels = jnp.asarray([0, 2])
      >>> print(el2n(logits, labels))
      [0.3742 0.9274]
    """
    valid = _check_logits_labels(logits, labels)
    p = jax.nn.softmax(logits, axis=-1)
    onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=p.dtype)
    return jnp.where(valid, jnp.linalg.norm(p - onehot, axis=-1), jnp.nan)


def margin(logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
    """Logit margin M_i = z_{i,y_i} - max_{k != y_i} z_{i,k} (Pleiss et al. 2020). [B, K] -> [B].

    NaN where a label is outside [0, K) (a value check under `scorejax.checked`).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> logits = jnp.log(jnp.asarray([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]]))
      >>> labels = jnp.asarray([0, 2])
      >>> print(margin(logits, labels))
      [ 1.2528 -0.6931]
    """
    valid = _check_logits_labels(logits, labels)
    true = jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
    others = jnp.where(jax.nn.one_hot(labels, logits.shape[-1], dtype=bool), -jnp.inf, logits)
    return jnp.where(valid, true - jnp.max(others, axis=-1), jnp.nan)


def input_norm(x: jnp.ndarray) -> jnp.ndarray:
    """||x_i||_2 over all non-batch axes: [B, ...] -> [B]. Kirsch's (2023) baseline score.

    Examples:
      >>> import jax.numpy as jnp
      >>> print(input_norm(jnp.asarray([[[3.0, 4.0]], [[0.0, 1.0]]])))
      [5. 1.]
    """
    return jnp.sqrt(jnp.sum(jnp.square(x.reshape(x.shape[0], -1)), axis=-1))


# --------------------------------------------------------------------------------------------
# Per-example gradient norms
# --------------------------------------------------------------------------------------------


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

    Examples:
      >>> import jax.numpy as jnp
      >>> def loss_fn(w, example):  # squared error of a linear model on one (x, y)
      ...     x, y = example
      ...     return 0.5 * (x @ w - y) ** 2
      >>> batch = (jnp.asarray([[1.0, 0.0], [0.0, 2.0]]), jnp.asarray([1.0, 0.0]))
      >>> print(per_example_grad_norms(loss_fn, jnp.asarray([3.0, 1.0]), batch))
      [2. 4.]
    """
    grad_fn = jax.grad(loss_fn)
    return jnp.sqrt(chunked_vmap(
        lambda ex: _sum_squares(grad_fn(params, ex)), batch, chunk_size=chunk_size
    ))


def _key_names(keypath: tuple[Any, ...]) -> tuple[str, ...]:
    """A pytree key path as a tuple of names, e.g. ('Dense_0', 'kernel')."""
    names = []
    for k in keypath:
        if isinstance(k, jax.tree_util.DictKey):
            names.append(str(k.key))
        elif isinstance(k, jax.tree_util.GetAttrKey):
            names.append(k.name)
        else:
            names.append(str(getattr(k, "idx", k)))
    return tuple(names)


def _check_mask(params: PyTree, mask: PyTree | None) -> list[bool]:
    """Per-leaf inclusion flags of `params` (all True without a mask); the trees must match."""
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    if mask is None:
        return [True] * len(leaves)
    mask_leaves = jax.tree_util.tree_flatten_with_path(mask)[0]
    if [_key_names(k) for k, _ in leaves] != [_key_names(k) for k, _ in mask_leaves]:
        raise ValueError("mask must be a pytree of booleans with the same structure as params")
    return [bool(m) for _, m in mask_leaves]


def _check_examples(x: jnp.ndarray, y: jnp.ndarray) -> None:
    """Trace-time checks of a batch of inputs [B, ...] and integer labels [B]."""
    if x.shape[:1] != y.shape:
        raise ValueError(f"x has batch {x.shape[:1]} but y has shape {y.shape}")
    if not jnp.issubdtype(y.dtype, jnp.integer):
        raise ValueError(f"y must be integer class indices, got dtype {y.dtype}")


def grand(
    apply_fn: Callable[[PyTree, jnp.ndarray], jnp.ndarray],
    params: PyTree,
    x: jnp.ndarray,
    y: jnp.ndarray,
    *,
    chunk_size: int | None = None,
    mask: PyTree | None = None,
) -> jnp.ndarray:
    """GraNd for one model: ||grad_w l(w; x_i, y_i)||_2 per example (Data Diet, Def. 2.1).

    l is the softmax cross-entropy of `apply_fn(params, x_i[None])` against y_i; the gradient is
    over every leaf of `params`, or over the leaves where `mask` is True. Each example is run on
    its own (a batch of one, vmapped), so the score never depends on batch-mates; models with
    BatchNorm must be applied in evaluation mode. Per-example gradients come from `vmap(grad)`,
    `chunk_size` examples at a time: exact, linear in B, memory chunk_size x |params|. For a
    flax module, `scorejax.ghost_norm.flax_grand` gives the same norms without building
    per-example gradients of its Dense and Conv layers.

    Args:
      apply_fn: (params, x [b, ...]) -> logits [b, K].
      params: the parameters to differentiate (any pytree apply_fn accepts).
      x: [B, ...] inputs. y: [B] integer labels in [0, K).
      chunk_size: examples per vmapped chunk (bounds memory); None does all B at once.
      mask: optional pytree of booleans shaped like params (True = included).
    Returns:
      [B] gradient norms; NaN where a label is outside [0, K) (a value check under
      `scorejax.checked`).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> def apply_fn(w, x):  # a linear classifier: (params, x [b, D]) -> logits [b, K]
      ...     return x @ w
      >>> x = jnp.asarray([[1.0, 0.0], [0.0, 2.0]])
      >>> print(grand(apply_fn, jnp.zeros((2, 3)), x, jnp.asarray([0, 1])))
      [0.8165 1.633 ]
    """
    _check_examples(x, y)
    selected = _check_mask(params, mask)
    leaves, treedef = jax.tree.flatten(params)
    diff_idx = [i for i, s in enumerate(selected) if s]
    valid = _labels_in_range(y, jax.eval_shape(apply_fn, params, x[:1]).shape[-1])

    def example_sq_norm(example):
        xi, yi = example

        def loss(diff_leaves):
            full = list(leaves)
            for i, leaf in zip(diff_idx, diff_leaves, strict=True):
                full[i] = leaf
            logits = apply_fn(jax.tree.unflatten(treedef, full), xi[None])
            return cross_entropy(logits, yi[None])[0]

        return _sum_squares(jax.grad(loss)([leaves[i] for i in diff_idx]))

    norms = jnp.sqrt(chunked_vmap(example_sq_norm, (x, y), chunk_size=chunk_size))
    return jnp.where(valid, norms, jnp.nan)


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

    Examples:
      >>> import jax.numpy as jnp
      >>> w = jnp.asarray([[1.0, -1.0], [2.0, 0.5]])
      >>> print(logit_input_grads(lambda w, x: x @ w, w, jnp.ones((2, 2)), jnp.asarray([0, 1])))
      [[ 1.   2. ]
       [-1.   0.5]]
    """
    if x.shape[:1] != labels.shape:
        raise ValueError(f"x has batch {x.shape[:1]} but labels has shape {labels.shape}")

    def one(xi, yi):
        return jax.grad(lambda v: apply_fn(params, v[None])[0, yi])(xi)

    return jax.vmap(one)(x, labels)


# --------------------------------------------------------------------------------------------
# Several models, example ids
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

    Examples:
      >>> import jax.numpy as jnp
      >>> stacked = jnp.asarray([[[1.0, 0.0]], [[0.0, 1.0]]])  # two one-feature models [R, 1, K]
      >>> x, y = jnp.asarray([[1.0]]), jnp.asarray([0])
      >>> print(mean_over_models(lambda w, x, y: el2n(x @ w, y), stacked, x, y))
      [0.7071]
    """
    per_model = jax.vmap(lambda p: score_fn(p, *args, **kwargs))(stacked_params)
    return jnp.mean(per_model, axis=0)


def scores_by_id(ids: jnp.ndarray, scores: jnp.ndarray, num_examples: int) -> jnp.ndarray:
    """Scatter scores computed in any order (shuffled, sharded, batched) to dataset order.

    Args:
      ids: [M] stable integer example ids in [0, num_examples).
      scores: [M, ...] the scores of those examples.
      num_examples: N.
    Returns:
      [N, ...] with row `id` holding that example's score; rows never seen hold NaN.

    Value checks (ids in [0, N), no duplicates) run under `scorejax.checked`; unchecked, an
    out-of-range id is dropped and of duplicates one score is kept.

    Examples:
      >>> import jax.numpy as jnp
      >>> print(scores_by_id(jnp.asarray([3, 0]), jnp.asarray([0.5, 2.0]), 4))
      [2.  nan nan 0.5]
    """
    if ids.shape != scores.shape[:1]:
        raise ValueError(f"ids {ids.shape} and scores {scores.shape} disagree on the batch size")
    checkify.debug_check(
        jnp.all((ids >= 0) & (ids < num_examples)), f"ids must lie in [0, {num_examples})"
    )
    sorted_ids = jnp.sort(ids)
    checkify.debug_check(jnp.all(sorted_ids[1:] != sorted_ids[:-1]), "ids contain duplicates")
    dtype = jnp.result_type(scores.dtype, jnp.float32)
    out = jnp.full((num_examples, *scores.shape[1:]), jnp.nan, dtype)
    return out.at[ids].set(scores.astype(dtype), mode="drop")
