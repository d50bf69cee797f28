"""DisBack stage 1 on disk (scorejax.train.degradation_recording, scorejax.train.degradation):
spacing, resume, sharding, bad input."""

from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scorejax import backtracking, distill
from scorejax.models.generator import MLPGenerator
from scorejax.models.mlp import ScoreMLP
from scorejax.score_matching import make_score_fn
from scorejax.score_sdes import VPSDE
from scorejax.train.degradation import DegradationPath
from scorejax.train.degradation_recording import record_degradation
from scorejax.train.optim import Adam

OPTIMIZER = Adam(3e-3)


@functools.cache
def _tiny_setup(hidden=(16,), seed=0):
    """A small teacher and a frozen generator whose samples sit off the teacher's data.

    Cached: the same functions across recordings let them share one compiled stage-1 step.
    """
    sde = VPSDE()
    net = ScoreMLP(hidden_sizes=hidden, embed_dim=8)
    teacher = jax.jit(net.init)(jax.random.key(seed), jnp.zeros((1, 2)), jnp.zeros((1,)))
    score_fn = make_score_fn(net.apply, sde=sde, parametrization="eps")
    gen = MLPGenerator(data_dim=2, hidden_sizes=(8,), output_scale=0.1)
    gparams = jax.jit(gen.init)(jax.random.key(1), jnp.zeros((1, 2)))
    shift = jnp.array([2.0, -1.0])
    return sde, teacher, score_fn, (lambda p, z: gen.apply(p, z) + shift), gparams


def _record(directory, num_nodes=4, num_steps=80, probe_every=8, callback=None, seed=0, **kw):
    sde, teacher, score_fn, gen_fn, gparams = _tiny_setup(seed=seed, **kw)
    return record_degradation(
        directory,
        score_fn=score_fn,
        teacher_params=teacher,
        generator_fn=gen_fn,
        generator_params=gparams,
        sde=sde,
        latent_shape=(2,),
        key=jax.random.key(7),
        num_nodes=num_nodes,
        num_steps=num_steps,
        probe_every=probe_every,
        batch_size=32,
        optimizer=OPTIMIZER,
        probe_samples=256,
        callback=callback,
    )


def _assert_trees_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def test_nodes_are_evenly_spaced_and_the_distance_grows_monotonically(tmp_path):
    """On a teacher whose score is wrong for the generator's samples, the recorded nodes move:
    D_k = E sigma^2 ||s_k - s_teacher||^2 rises from 0 at every node (no two adjacent within
    10%), the distance to the last node falls, and the recorded numbers are what the nodes give.
    """
    sde, teacher, score_fn, gen_fn, gparams = _tiny_setup()
    path = _record(tmp_path / "p")
    d = np.asarray(path.distances)
    assert d[0] == 0.0 and np.all(np.diff(d) > 0), d
    assert np.all(d[2:] >= 1.1 * d[1:-1]), d
    to_final = np.asarray(path.to_final)
    assert to_final[-1] == 0.0 and np.all(np.diff(to_final) < 0), to_final
    assert len(path.segment_gaps) == path.num_nodes and min(path.segment_gaps) > 0
    # Evenly spaced: every step of D within a factor 2 of the mean step.
    steps = np.diff(d)
    assert steps.max() < 2 * steps.mean() and steps.min() > 0.5 * steps.mean(), d
    # The recorded D of a node is the distance its loaded parameters give on fresh samples.
    node = path.load(2, teacher)
    x0 = gen_fn(gparams, jax.random.normal(jax.random.key(3), (4096, 2)))
    fresh = distill.score_distance(
        lambda x, t: score_fn(node, x, t),
        lambda x, t: score_fn(teacher, x, t),
        x0,
        jax.random.key(4),
        sde=sde,
    )
    np.testing.assert_allclose(float(fresh), d[2], rtol=0.15)
    assert path.meta["steps"] == 80 and "seconds" not in path.meta
    assert path.node_steps[0] == 0 and path.node_steps[-1] == 80
    assert "node 4: step 80" in path.profile()


def test_nodes_load_in_order_stack_and_resume_exactly(tmp_path):
    _, teacher, *_ = _tiny_setup()
    path = _record(tmp_path / "full")
    assert len(path) == 5 and path.order == (4, 3, 2, 1, 0)
    _assert_trees_equal(path.load(0, teacher), teacher)
    nodes = [path.load(i, teacher) for i in range(5)]
    stacked = path.stacked(teacher)
    for i in range(5):
        _assert_trees_equal(backtracking.select_node(stacked, jnp.int32(i)), nodes[i])

    # Interrupt between two probes, then finish: the same nodes, bit for bit.
    def crash(step, loss):
        if step == 44:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _record(tmp_path / "broken", callback=crash)
    with pytest.raises(ValueError, match="incomplete"):
        DegradationPath(tmp_path / "broken")
    resumed = _record(tmp_path / "broken")
    assert resumed.node_steps == path.node_steps
    assert resumed.meta["probes"] == path.meta["probes"]
    for i in range(5):
        _assert_trees_equal(resumed.load(i, teacher), nodes[i])
    # A complete path with the same settings is returned without retraining.
    again = _record(tmp_path / "broken", callback=crash)
    assert again.meta == resumed.meta


def test_path_bad_input_errors(tmp_path):
    _, teacher, *_ = _tiny_setup()
    with pytest.raises(FileNotFoundError, match="no degradation path"):
        DegradationPath(tmp_path / "nothing")
    with pytest.raises(ValueError, match="empty"):
        _record(tmp_path / "empty", num_nodes=0)
    with pytest.raises(ValueError, match="multiple of probe_every"):
        _record(tmp_path / "bad", num_steps=10)
    with pytest.raises(ValueError, match="probe more often"):
        _record(tmp_path / "bad", num_nodes=4, num_steps=24)
    # A recording that holds only the teacher (no node) is refused as empty.
    os.makedirs(tmp_path / "empty2")
    with open(tmp_path / "empty2" / "path.json", "w") as f:
        json.dump({"complete": True, "num_nodes": 0, "fingerprint": []}, f)
    with pytest.raises(ValueError, match="empty"):
        DegradationPath(tmp_path / "empty2")

    path = _record(tmp_path / "p", num_nodes=1, num_steps=8, probe_every=4)
    _, wide, *_ = _tiny_setup(hidden=(12,))
    with pytest.raises(ValueError, match="different score-model architecture"):
        path.load(1, wide)
    with pytest.raises(ValueError, match="different score-model architecture"):
        _record(tmp_path / "p", num_nodes=1, num_steps=8, probe_every=4, hidden=(12,))
    with pytest.raises(ValueError, match="other settings"):
        _record(tmp_path / "p", num_nodes=2, num_steps=8, probe_every=4)
    with pytest.raises(ValueError, match="teacher_digest"):
        _record(tmp_path / "p", num_nodes=1, num_steps=8, probe_every=4, seed=1)
    with pytest.raises(IndexError):
        path.load(2, teacher)


def test_select_nodes_spacing_and_errors():
    distances = [0.0, 0.5, 1.0, 1.2, 1.9, 2.0, 3.0, 3.1, 4.0]
    assert backtracking.select_nodes(distances, num_nodes=4) == [
        0,
        2,
        5,
        6,
        8,
    ]
    # A jump leaves later nodes on the next candidates, never two nodes on one.
    assert backtracking.select_nodes([0.0, 5.0, 5.1, 5.2, 6.0], num_nodes=3) == [0, 1, 2, 4]
    with pytest.raises(ValueError, match="never moved"):
        backtracking.select_nodes([0.0, 0.0, 0.0], num_nodes=2)
    with pytest.raises(ValueError, match="more than"):
        backtracking.select_nodes([0.0, 1.0], num_nodes=2)


_SHARDED = """
import jax, jax.numpy as jnp, numpy as np, json, sys
sys.path.insert(0, "tests")
from test_degradation import _record, _tiny_setup
from scorejax.train import make_mesh
from scorejax.train.degradation_recording import record_degradation
assert jax.device_count() == {devices}
_, teacher, *_ = _tiny_setup()
path = _record("{directory}")
print(json.dumps({{
    "probes": path.meta["probes"],
    "nodes": [[np.asarray(l).tolist() for l in jax.tree.leaves(path.load(i, teacher))]
              for i in range(len(path))],
}}))
"""


def test_stage1_on_four_devices_gives_the_one_device_nodes(run_python, tmp_path):
    """The batch of every stage-1 update is split over 4 forced CPU devices: the probes and the
    nodes equal the 1-device recording's (up to float32 reduction order)."""
    out = {}
    for devices in (1, 4):
        code = _SHARDED.format(devices=devices, directory=tmp_path / f"d{devices}")
        out[devices] = json.loads(run_python(code, devices=devices).strip().splitlines()[-1])
    p1, p4 = np.asarray(out[1]["probes"]), np.asarray(out[4]["probes"])
    np.testing.assert_array_equal(p1[:, 0], p4[:, 0])
    np.testing.assert_allclose(p1[:, 1], p4[:, 1], rtol=1e-4, atol=1e-6)
    for a, b in zip(out[1]["nodes"], out[4]["nodes"], strict=True):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
