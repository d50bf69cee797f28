"""Score matching on images: a U-Net on a Gaussian path, trained on a TFDS image dataset (`digits`).

Configs: `configs/score_matching_images.py`, reached as `configs/score_matching.py:digits_vp` /
`:digits_ve` / `:digits_edm` / `:digits_fm` (their `study` is this module). The path, the
network's parametrisation or EDM preconditioning, the loss (DSM, EDM, flow matching) and the
sampler are config fields shared with the toy study (`experiments.score_matching`: `make_sde`,
`make_model`, `make_loss`, `sample`). The run

1. trains `scorejax.models.unet.UNet` with the configured loss on the train split
   (seeded grain pipeline `scorejax.data.load`; jitted data-parallel step with EMA under the
   dtype policy `config.precision`, blocks rematerialised with `config.model.remat`; Orbax
   checkpoints, each with the grain iterator's state, so an interrupted run resumes from its
   latest checkpoint on the exact next batch, mid-epoch included);
2. trains a small CNN digits classifier once (`scorejax.models.classifier.CNNClassifier`) and
   caches it in `<workdir>/classifier.msgpack`;
3. evaluates the EMA network: test bits/dim (probability-flow ODE of the path, with the model
   converted to its score; Hutchinson divergence, uniform dequantisation), samples from the
   configured sampler, and sample quality against the test split as KID on the classifier's
   penultimate features and as the classifier's confident-prediction rate (share of samples
   with max class probability >= a threshold), with the same numbers for the train split as the
   reference a perfect model would reach;
4. writes `metrics.jsonl`, TensorBoard events, `eval.json`, `config.json`, `samples.png` (a grid
   of samples next to test images) and `loss.png`.
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from experiments.score_matching import (
    Data,
    Setup,
    check_config,
    field,
    make_loss,
    make_model,
    make_sde,
    make_step_and_state,
    sample,
)
from scorejax import metrics as sm
from scorejax.data import load, load_arrays
from scorejax.likelihood import image_bits_per_dim
from scorejax.models.classifier import CNNClassifier
from scorejax.models.unet import UNet
from scorejax.plotting import image_grid
from scorejax.sde import SDE
from scorejax.train import (
    Checkpointer,
    MetricWriter,
    Progress,
    TrainState,
    checkpoint_dir,
    make_mesh,
    prepare_workdir,
    put_replicated,
    read_metrics,
    shard_batch,
    write_json,
)
from scorejax.train import precision as dtype_policy
from scorejax.train.precision import precision_from_config

EVAL_FILE = "eval.json"
CLASSIFIER_FILE = "classifier.msgpack"
# Fields added after runs were recorded, with the values those runs used.
RECORD_DEFAULTS = {**dtype_policy.RECORD_DEFAULTS, "model.remat": False}


def make_unet(config: ml_collections.ConfigDict) -> UNet:
    """The `UNet` of `config.model`, computing in the dtype of `config.precision`.

    `model.remat` (absent from configs saved before it: False) rematerialises its blocks.
    """
    c = config.model
    if c.kind != "unet":
        raise ValueError(f"image studies need config.model.kind='unet', got {c.kind!r}")
    return UNet(
        channels=c.channels,
        channel_mult=tuple(c.channel_mult),
        num_res_blocks=c.num_res_blocks,
        attn_resolutions=tuple(c.attn_resolutions),
        mid_attention=c.mid_attention,
        num_heads=c.num_heads,
        num_groups=c.num_groups,
        fourier_scale=c.fourier_scale,
        remat=bool(c.get("remat", False)),
        **precision_from_config(config).module_kwargs(),
    )


def _check_config(config: ml_collections.ConfigDict) -> None:
    """The checks of the toy study (`experiments.score_matching.check_config`), whose training,
    path, model, loss and sampler fields this study shares."""
    check_config(config)


def _data_dir(config) -> str | None:
    return config.data.data_dir or None


def build(config: ml_collections.ConfigDict) -> Setup:
    """Check the config and build data, SDE and U-Net score model (as the toy study's `Setup`).

    `setup.data.shape` is one image's `(H, W, C)`; `setup.data.sample(key, n)` draws `n` train
    images `[n, H, W, C]` uniformly with replacement (the split is read on first use);
    `setup.init(key)` initialises the U-Net, `setup.model` holds its score, EDM denoiser and
    velocity, and `setup.score_fn(params, x, t)` is its score.
    """
    _check_config(config)
    sde, model = make_sde(config), make_unet(config)
    probe = load(config.data.name, "train", batch_size=1, data_dir=_data_dir(config),
                 shard_index=0, shard_count=1)
    shape = tuple(int(n) for n in probe.image_shape)

    @functools.cache
    def train_images() -> jax.Array:
        return jnp.asarray(load_arrays(config.data.name, "train", data_dir=_data_dir(config),
                                       scale=config.data.scale)["image"])

    def sample_images(key: jax.Array, n: int) -> jax.Array:
        images = train_images()
        return images[jax.random.randint(key, (n,), 0, images.shape[0])]

    def init(key: jax.Array) -> Any:
        return model.init(key, jnp.zeros((1, *shape)), jnp.zeros((1,)))

    fns = make_model(model.apply, sde, config)
    return Setup(Data(config.data.name, shape, sample_images, None), sde, init, fns.score_fn, fns)


class _TrainStream:
    """The training batches of this process: a `grain.DatasetIterator` and its checkpoint state.

    Batch s of the stream depends only on (seed, s) (`scorejax.data.load`). The state saved with
    a checkpoint is `{"start_step": first step of the stream, "iterator": the grain iterator's
    state}` (grain counts positions from the stream's first step). A run resumed from a
    checkpoint saved with it rebuilds that stream and sets the iterator's state, so it continues
    on the exact next batch, mid-epoch included; a checkpoint saved without one (older runs)
    restarts the stream at the checkpoint's step, which gives the same batches.
    """

    def __init__(self, config: ml_collections.ConfigDict, step: int, data_state: Any):
        self.start_step = step if data_state is None else int(data_state["start_step"])
        batches = load(
            config.data.name, "train", batch_size=config.train.batch_size, seed=config.seed,
            data_dir=_data_dir(config), num_epochs=None, scale=config.data.scale,
            in_memory=True, start_step=self.start_step,
            shard_index=jax.process_index(), shard_count=jax.process_count(),
        )
        self.iterator = iter(batches)
        if data_state is not None:
            self.iterator.set_state(data_state["iterator"])

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self.iterator)

    def get_state(self) -> dict[str, Any]:
        """The JSON state to save with the checkpoint of the batches consumed so far."""
        return {"start_step": self.start_step, "iterator": self.iterator.get_state()}


def train(config: ml_collections.ConfigDict, workdir: str, sde: SDE, model: UNet,
          image_shape: tuple[int, ...]) -> TrainState:
    """Train (or resume) the U-Net with `config.loss`; returns the final state."""
    t = config.train
    k = t.steps_per_call
    mesh = make_mesh()
    root = jax.random.key(config.seed)
    k_init, k_train = jax.random.fold_in(root, 0), jax.random.fold_in(root, 1)
    loss_fn = make_loss(config, sde, make_model(model.apply, sde, config))
    dummy = jnp.zeros((1, *image_shape))
    init = lambda key: model.init(key, dummy, jnp.zeros((1,)))
    step_fn, state = make_step_and_state(config, loss_fn, init, mesh, k_init)
    with Checkpointer(
        checkpoint_dir(workdir), save_every=t.checkpoint_every, keep=t.keep_checkpoints
    ) as ckpt:
        state = ckpt.restore_or(state)
        start = int(state.step)
        stream = _TrainStream(config, start, ckpt.restore_data_state())
        key = put_replicated(k_train, mesh)
        with (
            MetricWriter(workdir, resume_step=start or None) as writer,
            Progress(t.num_steps, initial=start, desc=f"train {config.data.name}") as bar,
        ):
            last_time, last_step = time.perf_counter(), start
            for step in range(start + k, t.num_steps + 1, k):
                images = np.stack([next(stream)["image"] for _ in range(k)])
                batch = shard_batch(images if k > 1 else images[0], mesh,
                                    batch_axis=1 if k > 1 else 0)
                state, metrics = step_fn(state, batch, key)
                if step % t.log_every == 0:
                    metrics = jax.device_get(metrics)
                    now = time.perf_counter()
                    rate = (step - last_step) * t.batch_size / (now - last_time)
                    last_time, last_step = now, step
                    writer.write(step, {**metrics, "images_per_sec": rate})
                    bar.update(step, loss=float(metrics["loss"]))
                else:
                    bar.update(step)
                ckpt.maybe_save(step, state, data_state=stream.get_state())
        ckpt.save(t.num_steps, state, data_state=stream.get_state())
    return state


def classifier(config: ml_collections.ConfigDict, workdir: str, train_data, test_data):
    """The digits classifier used for sample quality: trained once, cached in the workdir.

    Returns `(apply(images) -> (logits, features), test_accuracy)`.
    """
    c = config.eval.classifier
    net = CNNClassifier(num_classes=int(train_data["label"].max()) + 1)
    x, y = jnp.asarray(train_data["image"]), jnp.asarray(train_data["label"])
    params = net.init(jax.random.key(c.seed), x[:1])
    path = os.path.join(workdir, CLASSIFIER_FILE)
    if os.path.exists(path):
        with open(path, "rb") as f:
            params = flax.serialization.from_bytes(params, f.read())
    else:
        tx = optax.adam(c.learning_rate)

        def loss(p, xb, yb):
            logits = net.apply(p, xb)
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

        @jax.jit
        def epoch(carry, key):
            p, o = carry
            perm = jax.random.permutation(key, x.shape[0])
            nb = x.shape[0] // c.batch_size
            idx = perm[: nb * c.batch_size].reshape(nb, c.batch_size)

            def step(carry, i):
                p, o = carry
                g = jax.grad(loss)(p, x[i], y[i])
                u, o = tx.update(g, o, p)
                return (optax.apply_updates(p, u), o), None

            return jax.lax.scan(step, (p, o), idx)[0]

        carry = (params, tx.init(params))
        for e in range(c.epochs):
            carry = epoch(carry, jax.random.fold_in(jax.random.key(c.seed), e))
        params = carry[0]
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(flax.serialization.to_bytes(params))
        os.replace(tmp, path)
    apply = jax.jit(lambda images: net.apply(params, images, return_features=True))
    logits, _ = apply(jnp.asarray(test_data["image"]))
    accuracy = float(jnp.mean(jnp.argmax(logits, -1) == jnp.asarray(test_data["label"])))
    return apply, accuracy


def _quality(apply, images: jax.Array, test_features: jax.Array, threshold: float,
             key: jax.Array, num_subsets: int) -> dict[str, Any]:
    """KID against the test features and the classifier's confident-prediction rate."""
    logits, feats = apply(images)
    probs = jax.nn.softmax(logits, -1)
    size = min(images.shape[0], test_features.shape[0])
    kid_mean, kid_std = sm.kid(feats, test_features, key, num_subsets=num_subsets,
                               subset_size=size)
    counts = np.bincount(np.asarray(jnp.argmax(probs, -1)), minlength=probs.shape[1])
    return {
        "kid": float(kid_mean),
        "kid_std": float(kid_std),
        "confident_rate": float(jnp.mean(jnp.max(probs, -1) >= threshold)),
        "class_fraction_max": float(counts.max() / counts.sum()),
        "class_fraction_min": float(counts.min() / counts.sum()),
    }


def evaluate(config, workdir: str, sde: SDE, model: UNet, params) -> tuple[dict, dict]:
    """Test bits/dim, samples and sample quality of `params` (module docstring, step 3)."""
    e = config.eval
    data_dir = _data_dir(config)
    train_data = load_arrays(config.data.name, "train", data_dir=data_dir, scale=config.data.scale)
    test_data = load_arrays(config.data.name, "test", data_dir=data_dir, scale=config.data.scale)
    fns = make_model(model.apply, sde, config)
    key = jax.random.fold_in(jax.random.key(config.seed), 3)
    k_bpd, k_sample, k_kid = jax.random.split(key, 3)
    results: dict[str, Any] = {}

    apply, accuracy = classifier(config, workdir, train_data, test_data)
    results["classifier_test_accuracy"] = accuracy

    test_x = jnp.asarray(test_data["image"])
    t0 = time.perf_counter()
    bpd_fn = jax.jit(lambda p, x, k: image_bits_per_dim(
        fns.score_fn, p, x, k, sde=sde, scale=config.data.scale, rtol=e.bpd_tol, atol=e.bpd_tol,
        t_min=e.bpd_t_min))
    bpds, nfes = [], []
    for i in range(0, test_x.shape[0], e.bpd_batch):
        bpd, aux = bpd_fn(params, test_x[i : i + e.bpd_batch], jax.random.fold_in(k_bpd, i))
        bpds.append(np.asarray(bpd))
        nfes.append(int(aux.nfe))
    results["test_bpd"] = float(np.concatenate(bpds).mean())
    results["bpd_nfe_mean"] = float(np.mean(nfes))
    results["bpd_seconds"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    shape = (e.num_samples, *test_x.shape[1:])
    samples, nfe = sample(config, sde, fns, params, k_sample, shape)
    nfe = int(nfe)
    samples = jnp.clip(jax.block_until_ready(samples), -1.0, 1.0) if config.data.scale == \
        "[-1,1]" else jnp.clip(samples, 0.0, 1.0)
    results["sample_seconds"] = time.perf_counter() - t0
    results["sample_nfe"] = nfe

    _, test_feats = apply(test_x)
    thr, subsets = e.classifier.confidence_threshold, e.kid_subsets
    for name, imgs in (("model", samples), ("train_split", jnp.asarray(train_data["image"]))):
        for k, v in _quality(apply, imgs, test_feats, thr, k_kid, subsets).items():
            results[f"{name}/{k}"] = v
    test_probs = jax.nn.softmax(apply(test_x)[0], -1)
    results["test_split/confident_rate"] = float(jnp.mean(jnp.max(test_probs, -1) >= thr))
    return results, {"samples": np.asarray(samples), "test": np.asarray(test_x)}


def write_plots(config, workdir: str, results: dict, arrays: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lo = -1.0 if config.data.scale == "[-1,1]" else 0.0
    fig, axes = plt.subplots(1, 2, figsize=(12, 6.4))
    for ax, key, title in (
        (axes[0], "samples", f"{config.sde.name.upper()} samples ({config.sampler.name}, "
                             f"{results['sample_nfe']} NFE)\nKID {results['model/kid']:.4f}, "
                             f"confident {results['model/confident_rate']:.2f}"),
        (axes[1], "test", f"test split\nbits/dim of model {results['test_bpd']:.3f}"),
    ):
        ax.imshow(image_grid(arrays[key][:100], 10, lo), cmap="gray_r" if lo == 0 else "gray",
                  vmin=lo, vmax=1.0)
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, "samples.png"), dpi=110)
    plt.close(fig)
    records = [r for r in read_metrics(workdir) if "loss" in r]
    if records:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([r["step"] for r in records], [r["loss"] for r in records])
        loss_name = field(config, "loss.name").upper()
        ax.set(xlabel="step", ylabel=f"{loss_name} loss", yscale="log", title="training loss")
        fig.tight_layout()
        fig.savefig(os.path.join(workdir, "loss.png"), dpi=110)
        plt.close(fig)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Run the image study in `workdir` (resuming it); returns the results (also `eval.json`)."""
    _check_config(config)
    sde, model = make_sde(config), make_unet(config)
    workdir = str(prepare_workdir(config, workdir, defaults=RECORD_DEFAULTS))
    eval_path = os.path.join(workdir, EVAL_FILE)
    probe = load(config.data.name, "train", batch_size=1, data_dir=_data_dir(config),
                 shard_index=0, shard_count=1)
    state = train(config, workdir, sde, model, probe.image_shape)
    if os.path.exists(eval_path):
        with open(eval_path) as f:
            return json.load(f)
    results, arrays = evaluate(config, workdir, sde, model, state.ema_params)
    write_json(eval_path, results, indent=1)
    with MetricWriter(workdir, resume_step=config.train.num_steps) as writer:
        writer.write(config.train.num_steps, {f"eval/{k}": v for k, v in results.items()})
    write_plots(config, workdir, results, arrays)
    print(json.dumps(results, indent=1), flush=True)
    return results
