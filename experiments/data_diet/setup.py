"""Set-up of the data-diet study: what the config asks for, and the models, optimiser and data.

`validate` checks a config before anything runs; `make_setup` turns one of its models into the
hashable `Setup` that parametrises the jitted training and scoring code (`loop`, `scoring`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from scorejax.data import load_arrays
from scorejax.models.classifier import CNNClassifier, MLPClassifier
from scorejax.models.resnet import ResNet18
from scorejax.train.precision import Precision, precision_from_config

# --------------------------------------------------------------------------------------------
# What the config asks for
# --------------------------------------------------------------------------------------------


def model_names(config: ml_collections.ConfigDict) -> list[str]:
    """The models of the pruning study (`config.run_models`, comma-separated)."""
    return [m for m in config.run_models.split(",") if m]


def noise_model_names(config: ml_collections.ConfigDict) -> list[str]:
    """The models of the label-noise study (`config.noise.models`, comma-separated)."""
    return [m for m in config.noise.models.split(",") if m]


def score_names(config: ml_collections.ConfigDict) -> list[str]:
    """Names of the averaged scores of a score-run group (high score = hard example)."""
    s = config.scores
    names = [f"el2n_ep{e}" for e in s.el2n_epochs] + [f"grand_ep{e}" for e in s.grand_epochs]
    names += ["forgetting", "low_aum", "low_confidence", "variability", "input_norm"]
    if s.vog:
        names += ["vog", "vog_1run"]
    return names


def strategies(config: ml_collections.ConfigDict, model: str) -> list[str]:
    """The pruning strategies of `model` (`config.models[model].strategies`, comma-separated)."""
    return [s for s in config.models[model].strategies.split(",") if s]


def windows(config: ml_collections.ConfigDict) -> list[float]:
    """The offsets of the label-noise windows, in units of the number of flipped labels."""
    return list(config.noise.offsets)


def validate(config: ml_collections.ConfigDict) -> None:
    """Clear errors for inconsistent settings, before anything runs."""
    precision_from_config(config)
    names = score_names(config)
    s = config.scores
    late = [e for e in (*s.el2n_epochs, *s.grand_epochs) if e > s.epochs]
    if late:
        raise ValueError(f"score epochs {late} exceed scores.epochs={s.epochs}")
    for m in model_names(config) + noise_model_names(config):
        if m not in config.models:
            raise ValueError(f"model {m!r} has no entry in config.models")
    for m in model_names(config):
        for strategy in strategies(config, m):
            parts = strategy.split(":")
            ok = parts == ["random"] or (
                parts[0] in names
                and len(parts) in (2, 3)
                and parts[1] in ("hardest", "easiest")
                and parts[2:] in ([], ["balanced"])
            )
            if not ok:
                raise ValueError(
                    f"strategy {strategy!r} of {m}: use 'random' or "
                    f"'<score>:hardest|easiest[:balanced]' with a score in {names}"
                )
    for field, name in (
        ("scores.tiebreak", s.tiebreak),
        ("noise.window_score", config.noise.window_score),
    ):
        if name not in names:
            raise ValueError(f"{field}={name!r} is not one of the scores {names}")


# --------------------------------------------------------------------------------------------
# Models, optimiser, data
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Setup:
    """Static description of one model's training (hashable: it parametrises jitted code)."""

    model: nn.Module
    has_batch_norm: bool
    batch_size: int
    steps_per_epoch: int  # full-data steps per epoch; every run trains epochs x this many steps
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool
    vmap_runs: bool
    mesh: Mesh
    grand_method: str
    grand_chunk: int | None


def make_model(
    cfg: ml_collections.ConfigDict, num_classes: int, precision: Precision
) -> tuple[nn.Module, bool]:
    """(module, uses BatchNorm) for a model sub-config (`kind`: mlp, cnn or resnet18).

    The module computes in `precision.compute_dtype` and returns float32 logits; its batch norms
    run in float32, so the cross-entropy, the gradients and SGD are float32.
    """
    kw = precision.module_kwargs()
    if cfg.kind == "mlp":
        return MLPClassifier(num_classes, features=tuple(cfg.features), **kw), False
    if cfg.kind == "cnn":
        net = CNNClassifier(num_classes, features=tuple(cfg.features), hidden=cfg.hidden, **kw)
        return net, False
    if cfg.kind == "resnet18":
        return ResNet18(num_classes, width=cfg.width, blocks=tuple(cfg.blocks), **kw), True
    raise ValueError(f"unknown model kind {cfg.kind!r}; choose mlp, cnn or resnet18")


def make_setup(
    config: ml_collections.ConfigDict,
    model_name: str,
    mesh: Mesh,
    num_classes: int,
    steps_per_epoch: int,
) -> Setup:
    """The `Setup` of `config.models[model_name]` on `mesh`."""
    cfg = config.models[model_name]
    model, has_bn = make_model(cfg, num_classes, precision_from_config(config))
    return Setup(
        model=model,
        has_batch_norm=has_bn,
        batch_size=config.train.batch_size,
        steps_per_epoch=steps_per_epoch,
        mean=tuple(config.data.mean),
        std=tuple(config.data.std),
        augment=config.data.augment,
        vmap_runs=cfg.vmap_runs,
        mesh=mesh,
        grand_method=config.scores.grand_method,
        grand_chunk=config.scores.grand_chunk or None,
    )


def make_optimizer(
    config: ml_collections.ConfigDict, steps_per_epoch: int
) -> optax.GradientTransformation:
    """SGD (optionally Nesterov) momentum with step decays at epoch boundaries, L2 weight decay."""
    t = config.train
    boundaries = {int(e * steps_per_epoch): t.lr_decay for e in t.lr_decay_epochs}
    schedule = optax.piecewise_constant_schedule(t.learning_rate, boundaries)
    sgd = optax.sgd(schedule, momentum=t.momentum, nesterov=t.nesterov)
    if t.weight_decay:
        return optax.chain(optax.add_decayed_weights(t.weight_decay), sgd)
    return sgd


def load_data(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Train/test arrays in storage order (images in [0, 1]) through the TFDS loader."""
    d = config.data
    data_dir = d.data_dir or None
    train = load_arrays(d.name, d.train_split, data_dir=data_dir, scale="[0,1]")
    test = load_arrays(d.name, d.test_split, data_dir=data_dir, scale="[0,1]")
    if d.max_train_examples:
        train = {k: v[: d.max_train_examples] for k, v in train.items()}
    if d.max_test_examples:
        test = {k: v[: d.max_test_examples] for k, v in test.items()}
    num_classes = int(max(train["label"].max(), test["label"].max())) + 1
    if d.num_classes:
        num_classes = d.num_classes
    return {
        "x": jnp.asarray(train["image"]),
        "y": jnp.asarray(train["label"]),
        "ids": train["id"],
        "x_test": jnp.asarray(test["image"]),
        "y_test": jnp.asarray(test["label"]),
        "num_classes": num_classes,
    }


def normalize(setup: Setup, x: jnp.ndarray) -> jnp.ndarray:
    """Per-channel standardisation of [0, 1] images with the setup's mean and std."""
    mean = jnp.asarray(setup.mean, x.dtype)
    std = jnp.asarray(setup.std, x.dtype)
    return (x - mean) / std


def augment(key: jax.Array, x: jnp.ndarray) -> jnp.ndarray:
    """Reflect-pad 4, random crop to the original size, random horizontal flip (data_diet)."""
    b, h, w, _ = x.shape
    k_crop, k_flip = jax.random.split(key)
    padded = jnp.pad(x, ((0, 0), (4, 4), (4, 4), (0, 0)), mode="reflect")
    offsets = jax.random.randint(k_crop, (b, 2), 0, 9)
    crop = jax.vmap(lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], 0), (h, w, x.shape[3])))
    x = crop(padded, offsets)
    flip = jax.random.bernoulli(k_flip, 0.5, (b,))
    return jnp.where(flip[:, None, None, None], x[:, :, ::-1], x)


def eval_kwargs(setup: Setup) -> dict[str, bool]:
    """Keyword arguments of an inference-mode call of the setup's model."""
    return {"train": False} if setup.has_batch_norm else {}


def apply_eval(setup: Setup, variables: Any, x: jnp.ndarray) -> jnp.ndarray:
    """Logits of the model in inference mode on raw [0, 1] images `x`."""
    return setup.model.apply(variables, normalize(setup, x), **eval_kwargs(setup))
