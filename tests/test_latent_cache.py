"""Latent normalization from data, and the per-process latent dataset cache."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jdiff import data, latent
from jdiff.models import AutoencoderKL


def _ae(seed=0):
    return AutoencoderKL(
        1,
        block_out_channels=(4, 4),
        layers_per_block=1,
        latent_channels=2,
        norm_num_groups=2,
        mid_block_add_attention=False,
        rngs=nnx.Rngs(seed),
    )


@pytest.fixture(scope="module")
def digits():
    ds = data.load_digits()
    return data.Dataset(ds.x[:90], ds.label[:90])


def test_estimated_norm_gives_unit_variance_latents(digits):
    ae = _ae()
    raw = latent.encode_dataset(ae, digits.x, batch_size=32, normalized=False, dtype=np.float64)
    for shift in (False, True):
        scale, mean = latent.estimate_latent_norm(ae, digits.x, shift=shift, batch_size=32)
        latent.set_latent_norm(ae, scale, mean)
        z = latent.encode_dataset(ae, digits.x, batch_size=32, dtype=np.float64)
        assert z.std() == pytest.approx(1.0, rel=1e-5)  # Rombach et al.: unit-variance latents
        assert z.mean() == pytest.approx(0.0 if shift else raw.mean() / raw.std(), abs=1e-5)
    # Batching (with a zero-padded last batch) does not change the latents.
    np.testing.assert_allclose(
        latent.encode_dataset(ae, digits.x, batch_size=90),
        latent.encode_dataset(ae, digits.x, batch_size=32),
        atol=1e-5,
    )
    with pytest.raises(ValueError, match="scale"):
        latent.set_latent_norm(ae, 0.0)


def test_running_norm_starts_at_the_first_batch_and_tracks_the_population():
    ae = _ae()

    @jax.jit
    def feed(graphdef, state, z):
        m = nnx.merge(graphdef, state)
        latent.update_latent_norm(m, z, shift=True, decay=0.99)
        return nnx.state(m)

    graphdef, state = nnx.split(ae)
    first = 3.0 + 0.5 * jax.random.normal(jax.random.PRNGKey(0), (64, 2, 2, 2))
    state = feed(graphdef, state, first)
    m = nnx.merge(graphdef, state)
    assert float(m.scale[...]) == pytest.approx(1.0 / float(first.std()), rel=1e-5)
    assert float(m.shift[...]) == pytest.approx(float(first.mean()), rel=1e-5)
    # A stream of N(-1, 2^2) latents: the running estimate converges to scale 1/2, shift -1.
    for i in range(600):
        state = feed(graphdef, state, -1.0 + 2.0 * jax.random.normal(jax.random.PRNGKey(i + 1), (64, 2, 2, 2)))
    m = nnx.merge(graphdef, state)
    assert float(m.scale[...]) == pytest.approx(0.5, rel=0.01)
    assert float(m.shift[...]) == pytest.approx(-1.0, abs=0.02)
    assert float(m.moments[...][0]) == 601.0


def test_cache_shards_per_process_resume_and_refuse_stale_shards(tmp_path, digits):
    ae = _ae()
    latent.set_latent_norm(ae, 1.7, 0.1)
    d = str(tmp_path / "cache")
    whole = latent.encode_dataset(ae, digits.x, batch_size=16)
    # Two "processes" (run one after the other here) each encode their contiguous share.
    assert latent.write_latent_shard(d, ae, digits, process_index=1, process_count=2, batch_size=16)
    with pytest.raises(FileNotFoundError, match="shard-00000-of-00002"):
        latent.read_latent_cache(d)  # process 0 has not written yet (nor meta.json)
    assert latent.write_latent_shard(d, ae, digits, process_index=0, process_count=2, batch_size=16)
    ds, meta = latent.read_latent_cache(d)
    np.testing.assert_allclose(ds.x, whole, atol=1e-5)
    np.testing.assert_array_equal(ds.label, digits.label)
    assert (meta["scale"], meta["shift"], meta["posterior"]) == (pytest.approx(1.7), pytest.approx(0.1), "mode")
    assert latent.shard_bounds(90, 1, 2) == (45, 90)
    # Resume: a rerun reuses the shards that exist and encodes only the missing one.
    os.remove(os.path.join(d, "shard-00001-of-00002.npz"))
    assert not latent.write_latent_shard(d, ae, digits, process_index=0, process_count=2, batch_size=16)
    assert latent.write_latent_shard(d, ae, digits, process_index=1, process_count=2, batch_size=16)
    np.testing.assert_array_equal(
        latent.latent_cache(d, ae, digits, process_index=0, process_count=2, barrier=lambda: None)[0].x, ds.x
    )
    # Another data set, or another autoencoder, is an error naming the shard, not stale latents.
    other = data.Dataset(digits.x[::-1].copy(), digits.label[::-1].copy())
    with pytest.raises(ValueError, match=r"shard-00000-of-00002.npz.*dataset"):
        latent.write_latent_shard(d, ae, other, process_index=0, process_count=2)
    with pytest.raises(ValueError, match="autoencoder"):
        latent.write_latent_shard(d, _ae(1), digits, process_index=0, process_count=2)


def test_cache_of_posterior_samples_is_reproducible(tmp_path, digits):
    ae = _ae()
    small = data.Dataset(digits.x[:20], None)
    a, meta = latent.latent_cache(str(tmp_path / "a"), ae, small, key=jax.random.PRNGKey(3), batch_size=8)
    b, _ = latent.latent_cache(str(tmp_path / "b"), ae, small, key=jax.random.PRNGKey(3), batch_size=8)
    np.testing.assert_array_equal(a.x, b.x)
    assert a.label is None and meta["posterior"].startswith("sample")
    mode = latent.encode_dataset(ae, small.x, batch_size=8)
    std = nnx.jit(lambda m, x: m.encode(x).std)(ae, jnp.asarray(small.x))
    # The samples scatter around the modes with the posterior's std.
    np.testing.assert_allclose(((a.x - mode) / np.asarray(std)).std(), 1.0, rtol=0.15)
