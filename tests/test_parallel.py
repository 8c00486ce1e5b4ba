"""jdiff.parallel on 8 CPU devices: meshes, logical-axis rules, FSDP (memory per device measured from
the arrays' addressable shards, same numbers as replicated), restore onto another mesh shape,
start-up arguments."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

import jdiff
from jdiff import checkpoint, losses, models, parallel, training

RULES = parallel.FSDP_RULES


def _mlp():
    return models.MLP(2, hidden=64, depth=2, kind="velocity", rngs=nnx.Rngs(0))


def _dit():
    return models.DiT(
        8, 1, patch_size=2, hidden=64, depth=2, num_heads=4, num_classes=3, kind="velocity", rngs=nnx.Rngs(0)
    )


def _batch(net, seed=0):
    rng = np.random.default_rng(seed)
    shape = (16, 2) if isinstance(net, models.MLP) else (16, 8, 8, 1)
    out = {"x": rng.normal(size=shape).astype(np.float32)}
    if isinstance(net, models.DiT):
        out["label"] = rng.integers(0, 3, 16).astype(np.int32)
    return out


def _loss(net, batch, key):
    return losses.cfm_loss(jdiff.Model(net, jdiff.Linear(), net.kind), key, batch["x"], cond=batch.get("label"))


_TX = optax.adamw(3e-3)


@functools.cache
def _step_and_init(make_net, mesh_shape: tuple):
    """The jitted step and initial state of `make_net` on a mesh of `mesh_shape` (num_devices, data,
    fsdp, model), built once per shape (each build is a compile)."""
    n, data, fsdp, model = mesh_shape
    mesh = parallel.make_mesh(n, data=data, fsdp=fsdp, model=model)
    graphdef, state = training.init_train_state(make_net(), _TX, jax.random.PRNGKey(0), mesh=mesh, rules=RULES)
    step = training.make_train_step(
        _loss, graphdef, _TX, mesh=mesh, state_sharding=parallel.shardings_of(state), donate=False
    )
    return mesh, step, state


def _train(make_net, mesh_shape, steps, *, state=None, start=0):
    """(states after each step, losses) of `steps` steps from `state` (default: the initial state)."""
    mesh, step, init = _step_and_init(make_net, mesh_shape)
    state = init if state is None else state
    states, out = [], []
    for i in range(start, start + steps):
        state, m = step(state, parallel.global_batch(_batch(make_net(), i), mesh))
        states.append(state)
        out.append(float(m["loss"]))
    return states, np.array(out)


# ----------------------------------------------------------------------------------
# Meshes and rules
# ----------------------------------------------------------------------------------


def test_mesh_axes_and_errors():
    m = parallel.make_mesh(fsdp=4)
    assert m.axis_names == ("data", "fsdp", "model") and dict(m.shape) == {"data": 2, "fsdp": 4, "model": 1}
    assert dict(parallel.make_mesh(4, data=1, fsdp=-1, model=2).shape) == {"data": 1, "fsdp": 2, "model": 2}
    assert parallel.batch_shards(parallel.make_mesh(data=2, fsdp=4)) == 8
    assert parallel.batch_shards(parallel.make_mesh(data=2, model=4)) == 2
    with pytest.raises(ValueError, match="multiply to the 8 devices"):
        parallel.make_mesh(data=2, fsdp=2, model=1)
    with pytest.raises(ValueError, match="at most one -1"):
        parallel.make_mesh(data=-1, fsdp=-1)
    with pytest.raises(ValueError, match="`num_devices`"):
        parallel.make_mesh(9)
    with pytest.raises(ValueError, match="multiple of the batch shards"):
        parallel.local_batch_size(12, parallel.make_mesh(fsdp=8, data=1))


def test_logical_rules_split_only_dimensions_that_divide():
    mesh = parallel.make_mesh(data=1, fsdp=4, model=2)
    spec = parallel.logical_to_spec
    assert spec(("embed", "mlp"), (64, 256), mesh, RULES) == P("fsdp", "model")
    assert spec(("mlp", "embed"), (256, 64), mesh, RULES) == P("model", "fsdp")
    assert spec(("embed", "mlp"), (6, 256), mesh, RULES) == P(None, "model")  # 6 % 4: replicated there
    assert spec(("vocab", "embed"), (11, 64), mesh, RULES) == P(None, "fsdp")
    assert spec((None, None, "embed", "mlp"), (3, 3, 1, 8), mesh, RULES) == P(None, None, None, "model")
    assert spec(("embed", "embed"), (64, 64), mesh, RULES) == P("fsdp")  # a mesh axis splits one dimension
    assert spec(("embed",), (64,), mesh, (("embed", ("fsdp", "model")),)) == P(("fsdp", "model"))
    assert spec(("embed", "mlp"), (64, 256), mesh, ()) == P()  # no rules: replicated
    assert spec(("embed", "mlp"), (64, 256), parallel.make_mesh(), RULES) == P()  # fsdp = model = 1
    with pytest.raises(ValueError, match="`rules`.*not an axis of the mesh; accepted: data, fsdp, model"):
        spec(("embed",), (64,), mesh, (("embed", "tensor"),))
    with pytest.raises(ValueError, match="do not match the array's shape"):
        spec(("embed",), (64, 2), mesh, RULES)


@pytest.mark.parametrize("name", ["mlp", "dit", "unet"])
def test_every_network_kernel_is_annotated(name):
    """Every kernel/embedding of the three networks carries logical axis names, so FSDP splits it."""
    build = {
        "mlp": _mlp,
        "dit": _dit,
        "unet": lambda: models.UNet(
            8, 1, ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), num_classes=3, rngs=nnx.Rngs(0)
        ),
    }[name]
    params = nnx.state(nnx.eval_shape(build), nnx.Param)
    flat = jax.tree_util.tree_flatten_with_path(params, is_leaf=lambda x: isinstance(x, nnx.Variable))[0]
    weights = [
        (jax.tree_util.keystr(p), v)
        for p, v in flat
        if jax.tree_util.keystr(p).endswith(("['kernel']", "['embedding']"))
    ]
    assert weights and all(v.get_metadata().get("out_sharding") for _, v in weights), [
        k for k, v in weights if not v.get_metadata().get("out_sharding")
    ]
    mesh = parallel.make_mesh(data=1, fsdp=8)
    sharded = [
        k
        for (k, v), s in zip(
            weights,
            [
                parallel.logical_to_spec(v.get_metadata()["out_sharding"], v.get_value().shape, mesh, RULES)
                for _, v in weights
            ],
        )
        if s != P()
    ]
    assert len(sharded) >= 0.8 * len(weights)  # all but the few of width < 8 (data channels, class rows)


# ----------------------------------------------------------------------------------
# FSDP
# ----------------------------------------------------------------------------------


def _bytes_per_device(tree):
    per = {}
    for x in jax.tree.leaves(tree):
        for s in x.addressable_shards:
            per[s.device] = per.get(s.device, 0) + s.data.nbytes
    return per


REPLICATED, FSDP8 = (None, -1, 1, 1), (None, 1, 8, 1)


@pytest.mark.parametrize(
    "mesh_shape,spec", [(FSDP8, P("fsdp")), ((None, 2, 2, 2), P("fsdp", "model"))], ids=["fsdp8", "data2_fsdp2_model2"]
)
def test_sharded_runs_train_like_replicated(mesh_shape, spec):
    """FSDP on 8 devices, and FSDP x tensor parallelism x data parallelism on 2 x 2 x 2."""
    rep_states, rep_losses = _train(_mlp, REPLICATED, 3)
    states, fsdp_losses = _train(_mlp, mesh_shape, 3)
    np.testing.assert_allclose(fsdp_losses, rep_losses, rtol=1e-5)
    a, b = rep_states[-1], states[-1]
    assert b.params["blocks"][0]["dense1"]["kernel"].get_value().sharding.spec == spec
    # Adam turns a rounding-level gradient difference into an update of up to lr: absolute tolerance
    for x, y in zip(
        jax.tree.leaves((a.params, a.ema_params, a.opt_state)), jax.tree.leaves((b.params, b.ema_params, b.opt_state))
    ):
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("make_net", [_mlp, _dit], ids=["mlp", "dit"])
def test_fsdp_holds_one_eighth_of_every_sharded_leaf(make_net):
    """Parameters, EMA and both Adam moments, measured from the arrays' addressable shards."""
    mesh = parallel.make_mesh(data=1, fsdp=8)
    _, state = training.init_train_state(make_net(), _TX, jax.random.PRNGKey(0), mesh=mesh, rules=RULES)
    tree = (state.params, state.ema_params, state.opt_state)
    leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: isinstance(x, nnx.Variable))[0]
    n_sharded = 0
    for path, v in leaves:
        x = v.get_value() if isinstance(v, nnx.Variable) else v
        assert len(x.addressable_shards) == 8
        if x.sharding.spec != P():
            n_sharded += 1
            assert {s.data.size for s in x.addressable_shards} == {x.size // 8}, jax.tree_util.keystr(path)
        names = v.get_metadata().get("out_sharding") if isinstance(v, nnx.Variable) else None
        if names and any(n == "embed" and d % 8 == 0 for n, d in zip(names, x.shape)):
            assert x.sharding.spec != P(), jax.tree_util.keystr(path)  # every divisible annotated leaf is split
    n_kernels = sum(1 for p, _ in leaves if jax.tree_util.keystr(p).endswith(("['kernel']", "['embedding']")))
    assert n_sharded >= 0.8 * n_kernels
    # Each device stores 1/8 of the sharded bytes plus the small replicated leaves (biases, norms).
    total = sum(x.nbytes for x in jax.tree.leaves(tree))
    replicated = sum(x.nbytes for x in jax.tree.leaves(tree) if x.sharding.spec == P())
    per_device = _bytes_per_device(tree)
    assert set(per_device.values()) == {replicated + (total - replicated) // 8}
    assert max(per_device.values()) < 0.2 * total


def test_restore_onto_another_mesh_shape_continues_identically(tmp_path):
    """Train with FSDP on 8 devices, checkpoint step 2, restore it onto 4 devices (data=2, fsdp=2)
    and train on: steps 3 and 4 give the numbers of the uninterrupted 8-device run."""
    states, want = _train(_mlp, FSDP8, 4)
    ckpt = checkpoint.Checkpointer(str(tmp_path / "ck"), save_every=1)
    ckpt.save(2, states[1])
    ckpt.close()

    _, _, target = _step_and_init(_mlp, (4, 2, 2, 1))
    ckpt = checkpoint.Checkpointer(str(tmp_path / "ck"), save_every=1)
    restored = ckpt.restore(target)
    ckpt.close()
    leaf = restored.params["blocks"][0]["dense1"]["kernel"].get_value()
    assert leaf.sharding.mesh.devices.size == 4 and leaf.sharding.spec == P("fsdp")
    assert {s.data.shape for s in leaf.addressable_shards} == {(32, 64)}
    assert int(restored.step) == 2
    after, got = _train(_mlp, (4, 2, 2, 1), 2, state=restored, start=2)
    np.testing.assert_allclose(got, want[2:], rtol=1e-5)
    for x, y in zip(jax.tree.leaves(states[-1].params), jax.tree.leaves(after[-1].params)):
        np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-4, atol=2e-5)


# ----------------------------------------------------------------------------------
# Global arrays and start-up
# ----------------------------------------------------------------------------------


def test_to_global_keeps_values_and_keys():
    mesh = parallel.make_mesh(data=1, fsdp=8)
    tree = {"w": np.arange(32.0, dtype=np.float32).reshape(8, 4), "k": jax.random.key(3), "s": jnp.int32(5)}
    out = parallel.to_global(
        tree,
        {
            "w": jax.sharding.NamedSharding(mesh, P("fsdp")),
            "k": parallel.replicated(mesh),
            "s": parallel.replicated(mesh),
        },
    )
    assert [s.data.shape for s in out["w"].addressable_shards] == [(1, 4)] * 8
    np.testing.assert_array_equal(parallel.to_host(out["w"]), tree["w"])
    assert jax.dtypes.issubdtype(out["k"].dtype, jax.dtypes.prng_key)
    np.testing.assert_array_equal(jax.random.key_data(out["k"]), jax.random.key_data(tree["k"]))
    assert int(out["s"]) == 5 and out["s"].sharding.is_fully_replicated


def test_initialize_distributed_reads_arguments_and_environment(monkeypatch):
    for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(k, raising=False)
    assert parallel.initialize_distributed(False) is False  # one process: nothing to start
    monkeypatch.setenv("JAX_NUM_PROCESSES", "1")
    assert parallel.initialize_distributed(False) is False
    monkeypatch.setenv("JAX_NUM_PROCESSES", "two")
    with pytest.raises(ValueError, match="JAX_NUM_PROCESSES='two' must be an integer"):
        parallel.initialize_distributed(False)
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    monkeypatch.setenv("JAX_PROCESS_ID", "2")
    with pytest.raises(ValueError, match=r"`process_id` must be an int in \[0, num_processes=2\)"):
        parallel.initialize_distributed(False)
    with pytest.raises(ValueError, match="`coordinator_address` must be 'host:port'"):
        parallel.initialize_distributed(True, coordinator_address="localhost", num_processes=2, process_id=0)
    with pytest.raises(ValueError, match="`num_processes` must be a positive int"):
        parallel.initialize_distributed(True, num_processes=0, process_id=0)
