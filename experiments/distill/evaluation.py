"""Sample-quality evaluation of the distillation study's generators.

Every method and every step is scored on the same footing: the same latents, the same true
samples, the same MMD bandwidths (`Evaluator`). Toys (`make_toy_evaluator`): MMD^2, sliced W2,
energy distance and, for mixtures, mode coverage and the teacher's exact score mismatch. Images
(`make_image_evaluator`): the same distances in pixel space, KID and the confident-prediction
rate on the image study's classifier.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from experiments.distill.generators import Generator, Programs
from experiments.distill.methods import time_dist
from experiments.distill.teacher import Teacher
from scorejax import distill
from scorejax import metrics as sm
from scorejax.data import load_arrays
from scorejax.mode_metrics import in_mode_fraction, mode_coverage, mode_tv, mode_weights, near_modes


@dataclasses.dataclass(frozen=True)
class Evaluator:
    """Sample-quality metrics of a generator against a fixed set of true samples.

    Fixed keys and a fixed reference set, so every method and every step is scored on the same
    footing: the same latents, the same true samples, the same MMD bandwidths.
    """

    evaluate: Callable[[Any], dict[str, jax.Array]]
    sample: Callable[[Any], jax.Array]
    true: np.ndarray
    null: dict[str, float]


def make_evaluator(
    config: ml_collections.ConfigDict,
    teacher: Teacher,
    gen: Generator,
    key: jax.Array,
    workdir: str,
    programs: Programs | None = None,
) -> Evaluator:
    """The evaluator of the config's data kind (`make_toy_evaluator`, `make_image_evaluator`).

    Its jitted functions are kept in `programs` per generator architecture (`gen.apply`; None:
    a new `Programs`, shared with nothing).
    """
    programs = Programs() if programs is None else programs
    jitted = programs.evaluators.setdefault(gen.apply, {})
    if config.data.kind == "image":
        return make_image_evaluator(config, teacher, gen, key, workdir, jitted)
    return make_toy_evaluator(config, teacher, gen, key, jitted)


def make_toy_evaluator(
    config: ml_collections.ConfigDict,
    teacher: Teacher,
    gen: Generator,
    key: jax.Array,
    jitted: dict[str, Callable],
) -> Evaluator:
    """Metrics against fresh true samples of a 2-D toy; `null` scores a second true sample set.

    MMD^2 (RBF, median bandwidths), sliced W2 and energy distance; for mixtures also the mode
    coverage, the in-mode fraction, the mode-weight total variation and the teacher's exact score
    mismatch `E sigma_t^2 ||s_teacher - s*||^2` on the diffused generator samples. `jitted`
    holds the jitted functions of `gen`'s architecture (filled on first use).
    """
    e = config.eval
    setup = teacher.setup
    sde, mixture, score_fn = setup.sde, setup.data.mixture, setup.score_fn
    tdist = time_dist(config)
    k_true, k_null, k_z, k_sw, k_mis = jax.random.split(key, 5)
    n = e.num_samples
    true = setup.data.sample(k_true, n)
    true_b = setup.data.sample(k_null, n)
    # Everything fixed is passed as an argument, not closed over: XLA would otherwise constant-fold
    # the reference kernel matrices at compile time.
    consts = {
        "true": true,
        "bandwidths": sm.median_bandwidth(true, true_b)
        * jnp.asarray(sm.DEFAULT_BANDWIDTH_MULTIPLIERS),
        "z": jax.random.normal(k_z, (n, *gen.latent_shape)),
        "teacher": teacher.params,
        "mixture": mixture,
        "k_sw": k_sw,
        "k_mis": k_mis,
    }

    def quality(x, c):
        out = {
            "mmd2": sm.mmd2_rbf(x, c["true"], bandwidths=c["bandwidths"]),
            "sliced_w2": sm.sliced_wasserstein(
                x, c["true"], c["k_sw"], num_projections=e.num_projections
            ),
            "energy": sm.energy_distance(x, c["true"]),
        }
        if c["mixture"] is not None:
            mix = c["mixture"]
            pi = jnp.exp(mix.log_weights)
            # Samples within 3 standard deviations of a component's mean belong to that mode; a
            # mode is covered when it holds at least a quarter of its true weight.
            near = near_modes(x, mix.means, mix.stds, num_stds=3.0)
            out["mode_coverage"] = mode_coverage(jnp.mean(near, axis=0), pi, min_share=0.25)
            out["in_mode_fraction"] = in_mode_fraction(x, mix.means, mix.stds, num_stds=3.0)
            out["mode_tv"] = mode_tv(mode_weights(x, mix.means), pi)
            # The teacher's score mismatch on these samples, diffused (exact s*): on the
            # generator's samples it is what score distillation suffers; on true samples (the
            # null row) it is the teacher's error where it was trained.
            out["score_mismatch"] = distill.score_distance(
                lambda x_t, t: score_fn(c["teacher"], x_t, t),
                lambda x_t, t: mix.marginal_score(x_t, t, sde=sde),
                x,
                c["k_mis"],
                sde=sde,
                time_dist=tdist,
            )
        return out

    def sample(gen_params, c):
        return gen.apply(gen_params, c["z"])

    def evaluate(gen_params, c):
        x = sample(gen_params, c)
        out = quality(x, c)
        out["nonfinite"] = jnp.sum(~jnp.all(jnp.isfinite(x), -1))
        return out

    if "evaluate" not in jitted:
        jitted.update(quality=jax.jit(quality), evaluate=jax.jit(evaluate), sample=jax.jit(sample))
    null = {k: float(v) for k, v in jitted["quality"](true_b, consts).items()}
    evaluate_jit, sample_jit = jitted["evaluate"], jitted["sample"]
    return Evaluator(
        lambda p: evaluate_jit(p, consts),
        lambda p: sample_jit(p, consts),
        np.asarray(true),
        null,
    )


def make_image_evaluator(
    config: ml_collections.ConfigDict,
    teacher: Teacher,
    gen: Generator,
    key: jax.Array,
    workdir: str,
    jitted: dict[str, Callable],
) -> Evaluator:
    """Metrics of `eval.num_samples` generated images (clipped to the data range) against the
    `data.eval_split` images; `null` scores the first `eval.num_samples` images of `data.split`
    the same way.

    Pixel-space MMD^2, sliced W2 and energy distance (images flattened to `[N, H*W*C]`), KID on
    the penultimate features of the teacher study's classifier (trained with the teacher config's
    `eval.classifier` settings, cached as in that study), the classifier's confident-prediction
    rate (max probability >= `eval.classifier.confidence_threshold`), and per predicted class:
    `mode_coverage` (share of classes holding at least a quarter of their share of the reference
    labels) and `mode_tv` (total variation between predicted-class and label frequencies).
    `jitted` as for `make_toy_evaluator`.
    """
    from experiments import score_matching_images as smi

    e, tc = config.eval, teacher.config
    data_dir = config.data.data_dir or tc.data.data_dir or None
    load = functools.partial(load_arrays, config.data.name, data_dir=data_dir, scale=tc.data.scale)
    ref, other = load(config.data.eval_split), load(config.data.split)
    train_data = other if config.data.split == "train" else load("train")
    cache = teacher.workdir
    if not os.path.exists(os.path.join(cache, smi.CLASSIFIER_FILE)):
        cache = workdir
    classify, accuracy = smi.classifier(tc, cache, train_data, ref)
    logging.info("sample-quality classifier: test accuracy %.4f", accuracy)
    lo = -1.0 if tc.data.scale == "[-1,1]" else 0.0
    ref_x = jnp.asarray(ref["image"])
    # As many images as samples (when the split has them): the null needs no second program.
    other_x = jnp.asarray(other["image"][: e.num_samples])
    num_classes = int(train_data["label"].max()) + 1
    k_z, k_sw, k_kid = jax.random.split(key, 3)
    flat = lambda x: x.reshape(x.shape[0], -1)
    consts = {
        "true": flat(ref_x),
        "bandwidths": sm.median_bandwidth(flat(ref_x), flat(other_x))
        * jnp.asarray(sm.DEFAULT_BANDWIDTH_MULTIPLIERS),
        "true_features": classify(ref_x)[1],
        "pi": jnp.bincount(jnp.asarray(ref["label"]), length=num_classes) / ref_x.shape[0],
        "z": jax.random.normal(k_z, (e.num_samples, *gen.latent_shape)),
        "k_sw": k_sw,
        "k_kid": k_kid,
    }
    threshold = tc.eval.classifier.confidence_threshold

    def quality(x, logits, features, c):
        out = {
            "mmd2": sm.mmd2_rbf(flat(x), c["true"], bandwidths=c["bandwidths"]),
            "sliced_w2": sm.sliced_wasserstein(
                flat(x), c["true"], c["k_sw"], num_projections=e.num_projections
            ),
            "energy": sm.energy_distance(flat(x), c["true"]),
        }
        out["kid"], out["kid_std"] = sm.kid(
            features, c["true_features"], c["k_kid"], num_subsets=tc.eval.kid_subsets
        )
        probs = jax.nn.softmax(logits, -1)
        out["confident_rate"] = jnp.mean(jnp.max(probs, -1) >= threshold)
        w = jnp.mean(jax.nn.one_hot(jnp.argmax(logits, -1), num_classes), axis=0)
        out["mode_coverage"] = mode_coverage(w, c["pi"], min_share=0.25)
        out["mode_tv"] = mode_tv(w, c["pi"])
        out["nonfinite"] = jnp.sum(~jnp.all(jnp.isfinite(flat(x)), -1))
        return out

    def sample(gen_params, c):
        return jnp.clip(gen.apply(gen_params, c["z"]), lo, 1.0)

    if "quality" not in jitted:
        jitted.update(quality=jax.jit(quality), sample=jax.jit(sample))
    quality_jit, sample_jit = jitted["quality"], jitted["sample"]

    def evaluate(gen_params):
        x = sample_jit(gen_params, consts)
        return quality_jit(x, *classify(x), consts)

    null = {k: float(v) for k, v in quality_jit(other_x, *classify(other_x), consts).items()}
    return Evaluator(evaluate, lambda p: sample_jit(p, consts), np.asarray(ref_x), null)
