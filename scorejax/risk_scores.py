"""Risk scores read from a language model's multiple-choice answer-token probabilities.

Source: Cruz et al., *Evaluating Language Models as Risk Scores* (folktexts, NeurIPS 2024 D&B).
`answer_choice_distribution` normalises the next-token probabilities of the answer choices (over
prefix variants such as "A" and " A"), and `risk_score_from_choices` turns that distribution into
a risk score. Their calibration metrics are in `scorejax.calibration`.

Conventions: `token_probs` `(..., V, C)` holds, per prefix variant `V`, the probability of each of
the `C` answer tokens. Pure and jit/vmap-safe; shapes are checked while tracing, probability
values under `scorejax.checked`.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp

from scorejax import _score_utils as chk


class ChoiceDistribution(NamedTuple):
    """Normalised answer-choice distribution read from next-token probabilities."""

    probs: jax.Array  # (..., C) probability of each choice, summing to 1
    total_mass: jax.Array  # (...) token mass on the choices under the chosen prefix variant
    variant: jax.Array  # (...) index of the chosen prefix variant


def answer_choice_distribution(token_probs: jax.Array) -> ChoiceDistribution:
    r"""Distribution over multiple-choice answers from next-token probabilities (folktexts).

    `token_probs[..., v, c]` is the next-token probability of answer key c ("A", "B", ...) written
    with whitespace-prefix variant v (folktexts checks "" and " "; later versions also "_", "▁",
    "Ġ", "Ċ"). The variant with the largest total mass M_v = \sum_c token_probs[v, c] is kept
    (the first one on ties), and

        P(c) = token_probs[v*, c] / M_{v*}        (uniform over the C choices when M_{v*} = 0)

    folktexts warns when M_{v*} < 0.1; `total_mass` is returned so a caller can do the same.

    Args:
      token_probs: (..., V, C) probabilities in [0, 1]; V >= 1 prefix variants, C >= 2 choices.

    Returns:
      `ChoiceDistribution` with probs (..., C), total_mass (...), variant (...).
      Differentiable in token_probs where the total mass is positive.

    Examples:
      >>> import jax.numpy as jnp
      >>> dist = answer_choice_distribution(jnp.asarray([[0.1, 0.1], [0.3, 0.5]]))  # V=2, C=2
      >>> print(dist.probs, dist.total_mass, dist.variant)
      [0.375 0.625] 0.8 1
    """
    token_probs = chk.as_float(token_probs)
    if token_probs.ndim < 2:
        raise ValueError(f"token_probs must be (..., V, C), got shape {token_probs.shape}")
    chk.check_probabilities("token_probs", token_probs)
    mass = jnp.sum(token_probs, axis=-1)
    variant = jnp.argmax(mass, axis=-1)
    chosen = jnp.take_along_axis(token_probs, variant[..., None, None], axis=-2)[..., 0, :]
    total = jnp.take_along_axis(mass, variant[..., None], axis=-1)[..., 0]
    num_choices = token_probs.shape[-1]
    probs = jnp.where(
        total[..., None] > 0,
        chosen / jnp.where(total > 0, total, 1.0)[..., None],
        1.0 / num_choices,
    )
    return ChoiceDistribution(probs, total, variant)


def risk_score_from_choices(
    token_probs: jax.Array,
    choice_values: jax.Array,
    *,
    mode: Literal["auto", "positive", "expected"] = "auto",
) -> jax.Array:
    r"""Risk score from multiple-choice answer-token probabilities (folktexts, Cruz et al.).

    With P(c) from `answer_choice_distribution` and numeric values v_c of the choices:
      - binary question (C = 2, `mode='auto'` or 'positive'): risk = P(c+), where c+ is the choice
        with the highest value (the first such choice on ties);
      - otherwise ('auto' with C > 2, or 'expected'): risk = \sum_c v_c P(c).

    Args:
      token_probs: (..., V, C) next-token probabilities of the answer keys per prefix variant.
      choice_values: (C,) numeric value of each choice.
      mode: 'auto' (folktexts' rule), 'positive' or 'expected'.

    Returns:
      (...) risk scores. Differentiable in token_probs where the answer mass is positive.

    Examples:
      >>> import jax.numpy as jnp
      >>> token_probs = jnp.asarray([[0.2, 0.6, 0.2]])  # one variant, C=3 choices
      >>> print(f"{risk_score_from_choices(token_probs, jnp.asarray([0.0, 1.0, 2.0])):.4f}")
      1.0000
    """
    values = chk.as_float(choice_values)
    chk.check_ndim("choice_values", values, (1,))
    if len(chk.shape_of(token_probs)) < 2 or values.shape[0] != chk.shape_of(token_probs)[-1]:
        raise ValueError(
            f"shape mismatch: token_probs{chk.shape_of(token_probs)} must end in C = "
            f"len(choice_values) = {values.shape[0]}"
        )
    if mode not in ("auto", "positive", "expected"):
        raise ValueError(f"mode must be 'auto', 'positive' or 'expected', got {mode!r}")
    dist = answer_choice_distribution(token_probs)
    positive = mode == "positive" or (mode == "auto" and values.shape[0] == 2)
    if positive:
        return dist.probs[..., jnp.argmax(values)]
    return jnp.sum(dist.probs * values, axis=-1)
