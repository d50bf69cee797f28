"""Tests for scorejax.train.data_parallel: per-example scores sharded over 8 host devices."""

from __future__ import annotations


def test_sharded_scores_equal_one_device_and_ids_survive_shuffling(run_python):
    out = run_python(
        """
        import functools, jax, jax.numpy as jnp, numpy as np
        from scorejax import importance as imp
        from scorejax.models.classifier import CNNClassifier
        from scorejax.ghost_norm import flax_grand
        from scorejax.train import data_parallel, make_mesh
        assert jax.device_count() == 8
        model = CNNClassifier(10, features=(4, 8), hidden=8)
        key = jax.random.key(0)
        x = jax.random.normal(key, (32, 8, 8, 1))
        y = jax.random.randint(key, (32,), 0, 10)
        params = model.init(key, x)["params"]
        mesh = make_mesh()
        def scores(p, x, y):
            logits = model.apply({"params": p}, x)
            return jnp.stack([
                imp.el2n(logits, y),
                flax_grand(model, p, x, y, method="ghost", chunk_size=2),
                flax_grand(model, p, x, y, method="vmap", chunk_size=3),
            ], axis=-1)
        one = np.asarray(jax.jit(scores)(params, x, y))
        # Score a shuffled copy sharded over 8 devices, then map back by example id.
        perm = np.random.default_rng(0).permutation(32)
        ids = jnp.asarray(perm)
        sharded = data_parallel(scores, mesh)(params, x[perm], y[perm])
        assert len(sharded.sharding.device_set) == 8
        back = np.asarray(imp.scores_by_id(ids, sharded, 32))
        np.testing.assert_allclose(back, one, rtol=2e-5)
        print("ok", float(np.abs(back - one).max()))
        """
    )
    assert out.startswith("ok")


def test_map_in_batches_equals_one_call_with_a_ragged_last_batch(run_python):
    out = run_python(
        """
        import jax, jax.numpy as jnp, numpy as np
        from scorejax.train import data_parallel, make_mesh, map_in_batches
        assert jax.device_count() == 8
        w = jax.random.normal(jax.random.key(0), (3, 4))
        x = jax.random.normal(jax.random.key(1), (29, 3))
        y = jnp.arange(29) % 4
        def scores(w, x, y):
            logits = x @ w
            return {"picked": jnp.take_along_axis(logits, y[:, None], 1)[:, 0], "logits": logits}
        want = jax.jit(scores)(w, x, y)
        fn = data_parallel(scores, make_mesh())
        calls = []
        counted = lambda *a: calls.append(a[1].shape[0]) or fn(*a)
        # 29 examples, batches of 10 rounded up to 16 (a multiple of 8): 16 + 13 padded to 16.
        got = map_in_batches(counted, w, x, y, batch_size=10, multiple=8)
        assert calls == [16, 16], calls
        assert isinstance(got["logits"], np.ndarray) and got["logits"].shape == (29, 4)
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6)
        # A batch larger than the data: one call of N rounded up to the multiple.
        calls.clear()
        got = map_in_batches(counted, w, x, y, batch_size=100, multiple=8)
        assert calls == [32], calls
        np.testing.assert_allclose(got["picked"], want["picked"], rtol=1e-5, atol=1e-6)
        print("ok")
        """
    )
    assert out.startswith("ok")
