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
