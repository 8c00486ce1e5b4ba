"""jdiff.training / parallel / checkpoint: sharding equivalence, EMA, clipping, non-finite
steps, exact checkpoint round trips, SIGTERM, logging."""

import json
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jdiff import checkpoint, parallel, training

try:
    from helpers import count_compiles
except ImportError:  # pragma: no cover
    from tests.helpers import count_compiles


class TinyMLP(nnx.Module):
    """model(x, t) for 2-D points: a one-hidden-layer MLP on (x, t)."""

    def __init__(self, rngs, width=16, dropout=0.0):
        self.l1 = nnx.Linear(3, width, rngs=rngs)
        self.l2 = nnx.Linear(width, 2, rngs=rngs)
        self.drop = nnx.Dropout(dropout, rngs=rngs) if dropout else None

    def __call__(self, x, t, cond=None):
        h = nnx.gelu(self.l1(jnp.concatenate([x, t[:, None]], -1)))
        if self.drop is not None:
            h = self.drop(h)
        return self.l2(h)


def fm_loss(model, batch, key):
    """Per-example rectified-flow loss |v(x_t, t) - (eps - x0)|^2 (a stand-in for jdiff.losses)."""
    x = batch["x"]
    kt, ke = jax.random.split(key)
    t = jax.random.uniform(kt, x.shape[:1], x.dtype)
    eps = jax.random.normal(ke, x.shape, x.dtype)
    xt = (1 - t[:, None]) * x + t[:, None] * eps
    return jnp.sum((model(xt, t) - (eps - x)) ** 2, -1)


def _data(n=64, seed=1):
    return {"x": np.asarray(jax.random.normal(jax.random.PRNGKey(seed), (n, 2)), np.float32)}


def _run(mesh, num_steps, tx=None, loss=fm_loss, donate=True, **kw):
    tx = tx or optax.adam(1e-2)
    graphdef, state = training.init_train_state(TinyMLP(nnx.Rngs(0)), tx, jax.random.PRNGKey(0), mesh=mesh)
    step = training.make_train_step(loss, graphdef, tx, mesh=mesh, donate=donate, **kw)
    losses = []
    for i in range(num_steps):
        batch = _data(seed=i)
        batch = parallel.global_batch(batch, mesh) if mesh is not None else batch
        state, m = step(state, batch)
        losses.append(float(m["loss"]))
    return graphdef, state, np.array(losses)


def test_eight_devices_match_one_device():
    assert len(jax.devices()) == 8, "conftest forces 8 CPU devices"
    _, s8, l8 = _run(parallel.make_mesh(8), 4)
    _, s1, l1 = _run(parallel.make_mesh(1), 4)
    moved = optax.global_norm(jax.tree.map(lambda a, b: a - b, s8.params, s8.ema_params))
    assert float(moved) > 1e-3  # the parameters did move (EMA lags behind them)
    np.testing.assert_allclose(l8, l1, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(s8.params), jax.tree.leaves(s1.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # the state stays replicated and the batch is split over the data axis
    leaf = jax.tree.leaves(s8.params)[0]
    assert leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == 8
    b = parallel.global_batch(_data(), parallel.make_mesh(8))
    assert b["x"].sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"))  # fsdp = 1 here
    assert {s.data.shape for s in b["x"].addressable_shards} == {(8, 2)}


def test_step_compiles_once():
    mesh = parallel.make_mesh(2)
    tx = optax.sgd(1e-2)
    graphdef, state = training.init_train_state(TinyMLP(nnx.Rngs(0)), tx, jax.random.PRNGKey(0), mesh=mesh)
    step = training.make_train_step(fm_loss, graphdef, tx, mesh=mesh)
    state, _ = step(state, parallel.global_batch(_data(), mesh))
    with count_compiles() as n:
        for i in range(3):
            state, _ = step(state, parallel.global_batch(_data(seed=i), mesh))
        jax.block_until_ready(state)
    assert n() == 0
    assert int(state.step) == 4 and int(state.data_position) == 4


def _ramp_run(num_steps, **kw):
    """Train with loss = -(sum of all parameters) under SGD(1), no clipping: the gradient is -1
    for every parameter, so after k steps every parameter is exactly p_0 + k (a known ramp)."""
    tx = optax.sgd(1.0)

    def ramp_loss(model, batch, key):
        total = sum(jnp.sum(p) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
        return -total * jnp.ones(batch["x"].shape[:1], total.dtype)

    graphdef, state = training.init_train_state(TinyMLP(nnx.Rngs(0)), tx, jax.random.PRNGKey(0))
    p0 = [np.asarray(x, np.float64) for x in jax.tree.leaves(state.params)]
    step = training.make_train_step(ramp_loss, graphdef, tx, grad_clip_norm=None, donate=False, **kw)
    for i in range(num_steps):
        state, _ = step(state, _data(seed=i))
    return graphdef, state, p0


def test_ema_of_a_ramp_matches_its_closed_forms():
    """The EMA e_k = d e_{k-1} + (1 - d) p_k of the ramp p_k = p_0 + k (e_0 = p_0) has closed forms:
    constant decay d: e_k = p_0 + k - d (1 - d^k) / (1 - d) (the sum of (1 - d) d^(k-j) j);
    warmup decay d_i = (1 + i) / (10 + i) at step i: e_k = p_0 + 0.9 k (by induction:
    [0.9 i (1 + i) + 9 (i + 1)] / (10 + i) = 0.9 (i + 1))."""
    k, d = 6, 0.9
    _, state, p0 = _ramp_run(k, ema=d, ema_warmup=False)
    for p, start in zip(jax.tree.leaves(state.params), p0):
        np.testing.assert_allclose(p, start + k, rtol=0, atol=1e-5)  # the ramp itself
    for e, start in zip(jax.tree.leaves(state.ema_params), p0):
        np.testing.assert_allclose(e, start + k - d * (1 - d**k) / (1 - d), rtol=0, atol=1e-5)

    graphdef, state, p0 = _ramp_run(k, ema=0.999)  # warmup: (1 + i) / (10 + i) < 0.999 for these steps
    for e, start in zip(jax.tree.leaves(state.ema_params), p0):
        np.testing.assert_allclose(e, start + 0.9 * k, rtol=0, atol=1e-5)
    # the warmup rule's values at steps 0, 1, 2 and where the cap takes over (1 + s) / (10 + s) >= 0.9 at s = 80
    np.testing.assert_allclose(
        training.ema_decay(jnp.array([0, 1, 2, 79, 80, 1000]), 0.9), [0.1, 2 / 11, 3 / 12, 80 / 89, 0.9, 0.9], rtol=1e-6
    )
    # the sampling model carries the EMA weights
    m = training.ema_model(graphdef, state)
    np.testing.assert_array_equal(m.l1.kernel[...], state.ema_params["l1"]["kernel"][...])


def test_context_loss_gets_the_step_and_the_ema_target():
    """A ContextLoss sees step = state.step and target = the EMA weights before the update.

    The loss is fm_loss + step * 100 + |target params|^2: the extra term is constant in the
    online parameters, so the parameters follow the plain fm_loss run exactly, and the logged
    loss minus that run's is step * 100 + the EMA parameters' squared norm read from the state."""
    tx = optax.adam(1e-2)

    def context_loss(model, batch, key, *, step, target):
        tsum = sum(jnp.sum(x**2) for x in jax.tree.leaves(nnx.state(target, nnx.Param)))
        return fm_loss(model, batch, key) + step * 100.0 + tsum

    graphdef, s_ctx = training.init_train_state(TinyMLP(nnx.Rngs(0)), tx, jax.random.PRNGKey(0))
    _, s_ref = training.init_train_state(TinyMLP(nnx.Rngs(0)), tx, jax.random.PRNGKey(0))
    kw = {"ema": 0.9, "ema_warmup": False, "donate": False}  # no warmup: the EMA lags the parameters
    step_ctx = training.make_train_step(training.ContextLoss(context_loss), graphdef, tx, **kw)
    step_ref = training.make_train_step(fm_loss, graphdef, tx, **kw)
    for i in range(4):
        ema_sum = sum(float(np.sum(np.asarray(x, np.float64) ** 2)) for x in jax.tree.leaves(s_ctx.ema_params))
        par_sum = sum(float(np.sum(np.asarray(x, np.float64) ** 2)) for x in jax.tree.leaves(s_ctx.params))
        if i > 0:  # the target is the EMA, not the online model (they differ after one step)
            assert abs(ema_sum - par_sum) > 100 * 2e-4
        s_ctx, m_ctx = step_ctx(s_ctx, _data(seed=i))
        s_ref, m_ref = step_ref(s_ref, _data(seed=i))
        np.testing.assert_allclose(float(m_ctx["loss"]) - float(m_ref["loss"]), i * 100.0 + ema_sum, rtol=0, atol=2e-4)
        for a, b in zip(jax.tree.leaves(s_ctx.params), jax.tree.leaves(s_ref.params)):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)  # no gradient through step / target
    assert int(s_ctx.step) == 4


def test_gradient_clipping_bounds_the_update():
    tx = optax.sgd(1.0)
    graphdef, s0 = training.init_train_state(TinyMLP(nnx.Rngs(0)), tx, jax.random.PRNGKey(0))
    step = training.make_train_step(
        lambda m, b, k: 100.0 * fm_loss(m, b, k), graphdef, tx, grad_clip_norm=0.5, donate=False
    )
    s1, m = step(s0, _data())
    delta = optax.global_norm(jax.tree.map(lambda a, b: a - b, s1.params, s0.params))
    assert float(m["grad_norm"]) > 5.0  # the raw gradient is large ...
    np.testing.assert_allclose(delta, 0.5, rtol=1e-5)  # ... the SGD step has exactly the clip norm


def test_nonfinite_steps_are_skipped_counted_and_stop():
    def loss(model, batch, key):
        return fm_loss(model, batch, key) * batch["scale"]

    tx = optax.adam(1e-2)
    graphdef, state = training.init_train_state(TinyMLP(nnx.Rngs(0)), tx, jax.random.PRNGKey(0))
    step = training.make_train_step(loss, graphdef, tx, donate=False)
    good = {**_data(), "scale": np.ones(64, np.float32)}
    bad = {**_data(), "scale": np.full(64, np.nan, np.float32)}
    s1, m = step(state, good)
    assert bool(m["finite"]) and int(m["nonfinite_run"]) == 0
    s2, m = step(s1, bad)
    assert not bool(m["finite"]) and int(m["nonfinite_run"]) == 1
    for a, b in zip(jax.tree.leaves(s2), jax.tree.leaves(s1)):  # only counters and step move
        if a.shape == () and a.dtype == jnp.int32:
            continue
        np.testing.assert_array_equal(a, b)
    assert int(s2.step) == 2 and int(s2.nonfinite_total) == 1
    training.check_nonfinite(m, max_in_a_row=2)  # one in a row: fine
    s3, m = step(s2, bad)
    with pytest.raises(training.NonFiniteError, match="2 consecutive"):
        training.check_nonfinite(m, max_in_a_row=2)
    s4, m = step(s3, good)  # a finite step resets the run, keeps the total
    assert int(m["nonfinite_run"]) == 0 and int(m["nonfinite_total"]) == 2
    assert training.tree_all_finite(s4.params)


def test_nnx_rng_state_is_threaded_through_the_state():
    """Dropout's RNG counter is non-Param nnx state: it must advance and be checkpointed."""
    tx = optax.sgd(1e-2)
    graphdef, state = training.init_train_state(TinyMLP(nnx.Rngs(0, dropout=1), dropout=0.5), tx, jax.random.PRNGKey(0))
    counts0 = [int(x) for x in jax.tree.leaves(state.rest) if jnp.issubdtype(x.dtype, jnp.integer)]
    step = training.make_train_step(fm_loss, graphdef, tx, donate=False)
    state, _ = step(state, _data())
    counts1 = [int(x) for x in jax.tree.leaves(state.rest) if jnp.issubdtype(x.dtype, jnp.integer)]
    assert counts0 and [c + 1 for c in counts0] == counts1


def test_checkpoint_roundtrip_is_exact_and_keeps_k(tmp_path):
    mesh = parallel.make_mesh(8)
    _, state, _ = _run(mesh, 2)
    ckpt = checkpoint.Checkpointer(str(tmp_path / "ck"), save_every=2, max_to_keep=2)
    assert ckpt.latest_step() is None
    saved = [ckpt.save(s, state) for s in range(1, 8)]
    assert saved == [False, True, False, True, False, True, False]  # every 2 steps
    ckpt.wait()
    assert ckpt.all_steps() == [4, 6]  # keep 2
    restored = ckpt.restore(state)
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
        assert a.dtype == b.dtype and a.sharding == b.sharding
        np.testing.assert_array_equal(a, b)
    ckpt.close()


def test_checkpoint_refuses_nonfinite(tmp_path):
    _, state, _ = _run(None, 1)
    bad = state.replace(ema_params=jax.tree.map(lambda x: x * jnp.nan, state.ema_params))
    ckpt = checkpoint.Checkpointer(str(tmp_path / "ck"), save_every=1)
    with pytest.raises(checkpoint.NonFiniteCheckpointError, match="ema_params"):
        ckpt.save(1, bad)
    ckpt.close()
    assert ckpt.latest_step() is None and not os.listdir(tmp_path / "ck")


def test_sigterm_sets_the_preemption_flag():
    before = signal.getsignal(signal.SIGTERM)
    with checkpoint.PreemptionFlag() as flag:
        assert not flag.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert flag.requested
    assert signal.getsignal(signal.SIGTERM) is before


def test_metric_writer_and_image_grid(tmp_path):
    w = training.MetricWriter(str(tmp_path))
    w.write_scalars(3, {"loss": jnp.float32(0.5)})
    w.write_scalars(4, {"loss": 0.25, "grad_norm": 2.0})
    w.close()
    with open(tmp_path / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    assert rows == [{"step": 3, "loss": 0.5}, {"step": 4, "loss": 0.25, "grad_norm": 2.0}]
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "tb"))
    imgs = np.stack([np.full((2, 3, 1), v, np.float32) for v in (-1.0, 0.0, 1.0)])
    grid = training.save_image_grid(str(tmp_path / "g.png"), imgs, ncol=2)
    assert grid.shape == (2 * 3 + 1, 2 * 4 + 1, 1)
    assert grid[1, 1, 0] == 0 and grid[1, 5, 0] == 128 and grid[4, 1, 0] == 255 and grid[0, 0, 0] == 0
    from PIL import Image

    assert Image.open(tmp_path / "g.png").size == (9, 7)
