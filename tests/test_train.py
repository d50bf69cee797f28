"""scorejax.train: the step's invariances (eager == jit == scanned == sharded), checkpoint round
trips and failures, metric files, and the workdir guard."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scorejax.train import (
    Checkpointer,
    CheckpointError,
    MetricWriter,
    TrainState,
    WorkdirError,
    checkpoint_dir,
    loss_and_grad,
    make_mesh,
    make_train_step,
    prepare_workdir,
    put_replicated,
    read_metrics,
    shard_batch,
    train_step,
    write_json,
)

# A two-layer tanh regression with input noise drawn from the step key, so the key handling of
# the step is exercised as well as the gradient, optimiser and EMA.
PROBLEM = """
import jax, jax.numpy as jnp, optax

def init_params(key, d_in=3, width=16):
    k1, k2 = jax.random.split(key)
    return {
        "w1": jax.random.normal(k1, (d_in, width)) / jnp.sqrt(d_in),
        "b1": jnp.zeros((width,)),
        "w2": jax.random.normal(k2, (width, 1)) / jnp.sqrt(width),
    }

def loss_fn(params, batch, key):
    x = batch["x"] + 0.1 * jax.random.normal(key, batch["x"].shape)
    pred = jnp.tanh(x @ params["w1"] + params["b1"]) @ params["w2"]
    err = (pred[:, 0] - batch["y"]) ** 2
    return jnp.mean(err), {"max_err": jnp.max(err), "per_example": err}

def make_batch(key, n, d_in=3):
    x = jax.random.normal(key, (n, d_in))
    return {"x": x, "y": jnp.sin(x.sum(-1))}

tx = optax.adam(1e-2)
"""
_ns: dict = {}
exec(PROBLEM, _ns)  # the same definitions in this process
init_params, loss_fn, make_batch, tx = (
    _ns[k] for k in ("init_params", "loss_fn", "make_batch", "tx")
)


def _fresh_state():
    return TrainState.create(init_params(jax.random.key(0)), tx)


def _assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)


def test_create_state():
    state = _fresh_state()
    assert int(state.step) == 0
    _assert_trees_close(state.params, state.ema_params, 0, 0)
    leaves_p = jax.tree.leaves(state.params)
    leaves_e = jax.tree.leaves(state.ema_params)
    assert all(p is not e for p, e in zip(leaves_p, leaves_e, strict=True))


def test_jit_step_equals_eager_step():
    mesh = make_mesh(jax.devices()[:1])
    key = jax.random.key(1)
    batches = [make_batch(jax.random.key(10 + i), 32) for i in range(3)]
    eager = _fresh_state()
    with jax.disable_jit():
        for b in batches:
            eager, eager_metrics = train_step(
                eager,
                b,
                key,
                loss_fn=loss_fn,
                tx=tx,
                ema_decay=0.9,
            )
    step = make_train_step(loss_fn, tx, mesh=mesh, ema_decay=0.9)
    jitted = put_replicated(_fresh_state(), mesh)
    for b in batches:
        jitted, metrics = step(jitted, shard_batch(b, mesh), key)
    assert int(jitted.step) == int(eager.step) == 3
    _assert_trees_close(jitted, eager)
    assert set(metrics) == {"loss", "grad_norm", "max_err"}  # the per-example aux is not a metric
    _assert_trees_close(metrics, eager_metrics)
    # The EMA is a real average: it lags the params.
    assert not np.allclose(jitted.ema_params["w1"], jitted.params["w1"])


def test_ema_warmup_follows_its_formula():
    state = _fresh_state()
    batch = make_batch(jax.random.key(5), 8)
    key = jax.random.key(0)
    step = jax.jit(train_step, static_argnames=("loss_fn", "tx", "ema_decay", "ema_warmup"))
    plain, _ = step(state, batch, key, loss_fn=loss_fn, tx=tx, ema_decay=0.99)
    warm, _ = step(state, batch, key, loss_fn=loss_fn, tx=tx, ema_decay=0.99, ema_warmup=True)
    _assert_trees_close(warm.params, plain.params, 0, 0)
    # Update 0 uses decay min(0.99, 1/10) = 0.1 instead of 0.99.
    for d, new in ((0.99, plain), (0.1, warm)):
        expected = jax.tree.map(lambda e, p, d=d: d * e + (1 - d) * p, state.ema_params, new.params)
        _assert_trees_close(new.ema_params, expected)


def test_scanned_steps_equal_single_steps():
    mesh = make_mesh(jax.devices()[:1])
    key = jax.random.key(2)
    batches = [make_batch(jax.random.key(20 + i), 16) for i in range(4)]
    single = make_train_step(loss_fn, tx, mesh=mesh, ema_decay=0.5)
    s1 = put_replicated(_fresh_state(), mesh)
    losses = []
    for b in batches:
        s1, m = single(s1, b, key)
        losses.append(float(m["loss"]))
    scanned = make_train_step(loss_fn, tx, mesh=mesh, ema_decay=0.5, steps_per_call=4)
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *batches)
    s4, m4 = scanned(put_replicated(_fresh_state(), mesh), shard_batch(stacked, mesh, 1), key)
    assert int(s4.step) == 4
    _assert_trees_close(s4, s1)
    np.testing.assert_allclose(float(m4["loss"]), np.mean(losses), rtol=1e-5)


def test_microbatched_gradient_equals_full_batch():
    def noiseless(params, batch, key):
        del key
        pred = jnp.tanh(batch["x"] @ params["w1"] + params["b1"]) @ params["w2"]
        err = (pred[:, 0] - batch["y"]) ** 2
        return jnp.mean(err), {"per_example": err}

    params = init_params(jax.random.key(0))
    batch = make_batch(jax.random.key(4), 24)
    fn = jax.jit(loss_and_grad, static_argnums=(0, 4))
    (l1, _), g1 = fn(noiseless, params, batch, jax.random.key(0), 1)
    (l4, aux4), g4 = fn(noiseless, params, batch, jax.random.key(0), 4)
    np.testing.assert_allclose(l4, l1, rtol=1e-6)
    _assert_trees_close(g4, g1)
    assert aux4["per_example"].shape == (6,)  # averaged over the 4 parts
    with pytest.raises(ValueError, match="not divisible by microbatches=5"):
        loss_and_grad(noiseless, params, batch, jax.random.key(0), microbatches=5)


def test_step_donates_state():
    mesh = make_mesh(jax.devices()[:1])
    step = make_train_step(loss_fn, tx, mesh=mesh, ema_decay=0.9)
    state = put_replicated(_fresh_state(), mesh)
    step(state, make_batch(jax.random.key(3), 8), jax.random.key(0))
    assert state.params["w1"].is_deleted()


def test_bad_step_arguments():
    mesh = make_mesh(jax.devices()[:1])
    with pytest.raises(ValueError, match="ema_decay"):
        make_train_step(loss_fn, tx, mesh=mesh, ema_decay=1.0)
    with pytest.raises(ValueError, match="steps_per_call"):
        make_train_step(loss_fn, tx, mesh=mesh, ema_decay=0.9, steps_per_call=0)


def test_sharded_step_equals_single_device(run_python):
    out = run_python(
        PROBLEM
        + """
import numpy as np
from scorejax.train import (TrainState, make_mesh, make_train_step, put_replicated,
                            shard_batch)
assert jax.device_count() == 8
key = jax.random.key(1)
results = {}
for n, k, m in ((1, 1, 1), (8, 1, 1), (8, 2, 1), (1, 1, 2), (8, 1, 2)):
    mesh = make_mesh(jax.devices()[:n])
    step = make_train_step(
        loss_fn, tx, mesh=mesh, ema_decay=0.9, steps_per_call=k, microbatches=m
    )
    state = put_replicated(TrainState.create(init_params(jax.random.key(0)), tx), mesh)
    for i in range(4 // k):
        if k == 1:
            b = shard_batch(make_batch(jax.random.key(10 + i), 64), mesh)
        else:
            bs = [make_batch(jax.random.key(10 + k * i + j), 64) for j in range(k)]
            b = shard_batch(jax.tree.map(lambda *x: jnp.stack(x), *bs), mesh, batch_axis=1)
        if n == 8:
            assert len(b["x"].sharding.device_set) == 8
            assert b["x"].addressable_shards[0].data.shape[-2] == 8
        state, metrics = step(state, b, key)
    assert len(state.params["w1"].sharding.device_set) == n
    assert state.params["w1"].sharding.is_fully_replicated
    results[(n, k, m)] = jax.device_get(state)
for (n, k, m), state in results.items():
    ref = results[(1, 1, m)]
    diff = max(jax.tree.leaves(jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))),
                                            state, ref)))
    print(f"diff {n} {k} {m} {diff}")
try:
    shard_batch(make_batch(key, 12), make_mesh())
except ValueError as e:
    print("error:", e)
"""
    )
    lines = out.strip().splitlines()
    diffs = [line for line in lines if line.startswith("diff")]
    assert len(diffs) == 5
    for line in diffs:
        assert float(line.split()[-1]) < 1e-5, line
    assert "not divisible by the 8 devices" in lines[-1]


def test_checkpoint_round_trip(tmp_path):
    mesh = make_mesh(jax.devices()[:1])
    step = make_train_step(loss_fn, tx, mesh=mesh, ema_decay=0.9)
    key = jax.random.key(0)
    ckpt = Checkpointer(tmp_path / "ckpt", save_every=2, keep=2)
    fresh = put_replicated(_fresh_state(), mesh)
    assert ckpt.restore_or(fresh) is fresh  # nothing saved yet
    state = put_replicated(_fresh_state(), mesh)
    saved = {}
    for i in range(1, 7):
        state, _ = step(state, make_batch(jax.random.key(i), 8), key)
        # The save copies off the devices before returning, so the next (donating) step is safe.
        if ckpt.maybe_save(i, state):
            saved[i] = jax.device_get(state)
    ckpt.close()
    assert sorted(saved) == [2, 4, 6]
    reopened = Checkpointer(tmp_path / "ckpt", save_every=2, keep=2)
    assert reopened.all_steps() == [4, 6]  # keep=2
    restored = reopened.restore_or(put_replicated(_fresh_state(), mesh))
    assert int(restored.step) == 6
    _assert_trees_close(jax.device_get(restored), saved[6], 0, 0)
    assert restored.params["w1"].sharding == fresh.params["w1"].sharding
    reopened.close()


def _saved_checkpoint(tmp_path):
    ckpt = Checkpointer(tmp_path / "ckpt", save_every=1, async_save=False)
    ckpt.save(1, _fresh_state())
    ckpt.close()
    return tmp_path / "ckpt"


def test_corrupt_checkpoint_raises_clear_error(tmp_path):
    directory = _saved_checkpoint(tmp_path)
    # Truncate the array data files of the step, as a disk error or a broken copy would.
    files = [p for p in (directory / "1").rglob("d/*") if p.is_file() and p.stat().st_size > 0]
    assert files
    for p in files:
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 3])
    ckpt = Checkpointer(directory, save_every=1)
    with pytest.raises(CheckpointError, match=r"cannot restore checkpoint step 1 .* corrupt"):
        ckpt.restore_or(_fresh_state())


def test_checkpoint_of_other_model_raises_clear_error(tmp_path):
    directory = _saved_checkpoint(tmp_path)
    other = TrainState.create(init_params(jax.random.key(0), width=32), tx)
    with pytest.raises(CheckpointError, match="different model"):
        Checkpointer(directory, save_every=1).restore_or(other)


def test_metric_writer_and_resume_truncation(tmp_path):
    with MetricWriter(tmp_path) as w:
        for s in (1, 2, 3):
            w.write(s, {"loss": jnp.float32(1.0 / s), "bins": np.arange(3.0)})
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [1, 2, 3]
    assert records[1]["loss"] == pytest.approx(0.5) and records[0]["bins"] == [0.0, 1.0, 2.0]
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path))
    with MetricWriter(tmp_path, resume_step=2) as w:  # the attempt that wrote step 3 was lost
        w.write(3, {"loss": 0.25})
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path)] == [
        (1, 1.0),
        (2, 0.5),
        (3, 0.25),
    ]
    MetricWriter(tmp_path).close()
    assert read_metrics(tmp_path) == []


def _listing(root):
    return sorted(
        (str(p.relative_to(root)), p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*")
    )


def test_workdir_guard(tmp_path):
    import ml_collections

    config = ml_collections.ConfigDict({"seed": 0, "model": {"width": 8, "sizes": (1, 2)}})
    workdir = prepare_workdir(config, tmp_path / "run")
    assert json.loads((workdir / "config.json").read_text())["model"]["sizes"] == [1, 2]
    # Without a checkpoint a changed config simply replaces the record.
    config.model.width = 16
    prepare_workdir(config, workdir)
    Checkpointer(checkpoint_dir(workdir), save_every=1, async_save=False).save(1, _fresh_state())
    prepare_workdir(config, workdir)  # the same config resumes
    before = _listing(workdir)
    other = ml_collections.ConfigDict(config.to_dict())
    other.model.width = 32
    with pytest.raises(WorkdirError, match=r"different config \(model.width: 16 -> 32\)"):
        prepare_workdir(other, workdir)
    assert _listing(workdir) == before  # nothing written
    prepare_workdir(other, workdir, ignore=("model.width",))
    (workdir / "config.json").unlink()
    with pytest.raises(WorkdirError, match="no config.json"):
        prepare_workdir(config, workdir)


def test_write_json_is_atomic_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "record.json"
    write_json(path, {"a": [1, 2.5], "b": "x"}, indent=1)
    assert json.loads(path.read_text()) == {"a": [1, 2.5], "b": "x"}
    assert path.read_text().endswith("\n")
    # A write that fails half-way (an object JSON cannot encode) leaves the old record whole.
    with pytest.raises(TypeError):
        write_json(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": [1, 2.5], "b": "x"}
    write_json(str(path), [3])
    assert json.loads(path.read_text()) == [3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["record.json"]
