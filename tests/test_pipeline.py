"""The grain input pipeline: exact resume from a checkpointed iterator state, worker processes,
batches placed as global sharded arrays."""

from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("tensorflow_datasets")
pytest.importorskip("grain")

import jax.numpy as jnp  # noqa: E402

from scorejax.data import load  # noqa: E402
from scorejax.train import Checkpointer, batch_sharding, make_mesh  # noqa: E402
from scorejax.train.checkpoint import DATA_STATE_DIR  # noqa: E402


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tfds"))
    load("digits", "train", batch_size=1, data_dir=path)  # builds digits once
    return path


def _host(batch):
    return {k: np.asarray(v) for k, v in batch.items()}


def _assert_same(xs, ys):
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys, strict=True):
        for k in ("image", "label", "id"):
            np.testing.assert_array_equal(x[k], y[k])


def test_interrupted_run_resumes_on_the_exact_next_batch(data_dir, tmp_path):
    """A run killed mid-epoch restores its state and its iterator state from the checkpoint
    and then sees exactly the batches of the uninterrupted run."""
    mesh = make_mesh()
    kw = dict(batch_size=100, seed=4, data_dir=data_dir, num_epochs=None)
    batches = load("digits", "train", sharding=batch_sharding(mesh), **kw)  # 14 steps/epoch
    total, stop = 26, 19

    def run(ckpt, state, it, steps):
        seen = []
        for step in range(int(state["step"]) + 1, steps + 1):
            b = next(it)
            seen.append(_host(b))
            state = {"step": state["step"] + 1, "sum": state["sum"] + jnp.sum(b["id"])}
            ckpt.maybe_save(step, state, data_state=it.get_state())
        return state, seen

    fresh = {"step": jnp.zeros((), jnp.int32), "sum": jnp.zeros((), jnp.int32)}
    with Checkpointer(tmp_path / "ref", save_every=total, async_save=False) as ckpt:
        reference, expected = run(ckpt, fresh, iter(batches), total)
    with Checkpointer(tmp_path / "run", save_every=stop, async_save=False) as ckpt:
        run(ckpt, fresh, iter(batches), stop + 3)  # interrupted 3 steps after a checkpoint
    with Checkpointer(tmp_path / "run", save_every=stop, async_save=False) as ckpt:
        state = ckpt.restore_or(fresh)
        assert int(state["step"]) == stop
        it = iter(batches)
        it.set_state(ckpt.restore_data_state())
        final, resumed = run(ckpt, state, it, total)
    _assert_same(resumed, expected[stop:])
    assert int(final["sum"]) == int(reference["sum"])
    first = expected[0]
    assert first["image"].shape == (100, 8, 8, 1) and first["id"].dtype == np.int32
    assert stop % batches.steps_per_epoch  # the interruption is mid-epoch
    # A stream started at the checkpoint's step (no iterator state) is the same stream.
    _assert_same([_host(b) for b in list(batches.dataset()[stop:total])], expected[stop:])


def test_data_states_follow_the_kept_checkpoints(tmp_path):
    state = {"w": jnp.ones(3)}
    with Checkpointer(tmp_path, save_every=1, keep=2, async_save=False) as ckpt:
        assert ckpt.restore_data_state() is None
        for step in (1, 2, 3):
            ckpt.save(step, state, data_state={"next_index": step})
        ckpt.save(4, state)
        assert ckpt.all_steps() == [3, 4]
        assert ckpt.restore_data_state(3) == {"next_index": 3}
        assert ckpt.restore_data_state() is None  # step 4 was saved without one
        kept = sorted(os.listdir(tmp_path / DATA_STATE_DIR))
    assert kept == ["3.process0.json"]
    with Checkpointer(tmp_path, save_every=1) as ckpt:  # Orbax ignores the data_state folder
        np.testing.assert_array_equal(ckpt.restore_or({"w": jnp.zeros(3)})["w"], state["w"])


def test_worker_processes_give_the_same_batches_and_resume(data_dir):
    """Two worker processes (each reads every other step; grain interleaves them) give the
    in-process batches, across an epoch boundary and after resuming from the iterator state."""
    kw = dict(batch_size=64, seed=2, data_dir=data_dir, num_epochs=None)
    expected = [_host(b) for b in list(load("digits", "test", **kw).dataset()[:7])]
    batches = load("digits", "test", num_workers=2, **kw)  # 5 steps per epoch
    it = iter(batches)
    got = [next(it) for _ in range(4)]
    state = it.get_state()
    it.close()
    again = iter(batches)
    again.set_state(state)
    got += [next(again) for _ in range(3)]
    again.close()
    _assert_same(got, expected)


def test_batches_are_global_arrays_on_every_device(run_python, data_dir):
    out = run_python(
        f"""
        import jax, numpy as np
        from scorejax.data import load
        from scorejax.train import batch_sharding, make_mesh
        sharding = batch_sharding(make_mesh())
        kw = dict(batch_size=64, seed=1, data_dir={data_dir!r})
        numpy_batch = next(iter(load("digits", "test", **kw)))
        batch = next(iter(load("digits", "test", sharding=sharding, **kw)))
        for k, v in batch.items():
            assert isinstance(v, jax.Array) and v.sharding == sharding, k
            assert len(v.addressable_shards) == 4 and v.addressable_shards[0].data.shape[0] == 16
            np.testing.assert_array_equal(np.asarray(v), numpy_batch[k])
        for bad in (dict(batch_size=66), dict(drop_remainder=False, batch_size=64)):
            try:
                load("digits", "test", sharding=sharding, **{{**kw, **bad}})
            except ValueError as e:
                print("refused:", str(e)[:40])
        print("ok")
        """,
        devices=4,
    )
    assert out.count("refused:") == 2 and out.strip().endswith("ok")
