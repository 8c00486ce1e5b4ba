"""Post-hoc EMA (Karras et al. 2024): power-function profiles, their closed-form inner products,
the train step's tracking, snapshots, and the least-squares reconstruction of other EMA lengths
on a synthetic weight trajectory whose power EMA of every length is known in closed form."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jdiff import checkpoint, training
from jdiff import posthoc_ema as P


def _weights(t, sigma_rel):
    """Closed-form weight of steps 1..t in the power EMA of exponent gamma at time t:
    (k^(g+1) - (k-1)^(g+1)) / t^(g+1) (the telescoping product of beta(j) = (1 - 1/j)^(g+1))."""
    g = float(P.sigma_rel_to_gamma(sigma_rel))
    k = np.arange(1, t + 1, dtype=np.float64)
    return (k ** (g + 1) - (k - 1) ** (g + 1)) / float(t) ** (g + 1)


def test_sigma_rel_and_gamma():
    # EDM2 tracks sigma_rel 0.05 and 0.10, i.e. gamma = 16.97 and 6.94 (the paper's numbers).
    np.testing.assert_allclose(P.sigma_rel_to_gamma([0.05, 0.10]), [16.97, 6.94], atol=5e-3)
    s = np.array([0.01, 0.05, 0.13, 0.28])
    np.testing.assert_allclose(P.gamma_to_sigma_rel(P.sigma_rel_to_gamma(s)), s, rtol=1e-12)
    # sigma_rel is the std of tau / t under the profile (gamma + 1) x^gamma on [0, 1]
    g = 6.0
    mean, second = (g + 1) / (g + 2), (g + 1) / (g + 3)
    assert P.gamma_to_sigma_rel(g) == pytest.approx(np.sqrt(second - mean**2), rel=1e-12)
    with pytest.raises(ValueError, match="must be in"):
        P.sigma_rel_to_gamma(0.3)


def test_profile_inner_products_against_quadrature():
    for t_a, g_a, t_b, g_b in [(100.0, 6.94, 250.0, 16.97), (300.0, 3.0, 120.0, 10.0), (50.0, 2.0, 50.0, 2.0)]:
        tau = np.linspace(0.0, min(t_a, t_b), 200_001)
        f = (g_a + 1) * tau**g_a / t_a ** (g_a + 1) * (g_b + 1) * tau**g_b / t_b ** (g_b + 1)
        quad = np.sum((f[1:] + f[:-1]) * np.diff(tau)) / 2
        assert P.profile_inner_product(t_a, g_a, t_b, g_b) == pytest.approx(quad, rel=1e-6)


def test_tracked_profile_is_the_closed_form_power_ema():
    rng = np.random.default_rng(0)
    traj = rng.standard_normal((300, 5))
    ema = P.PowerEMA.init(jnp.zeros(5), (0.05, 0.10, 0.2))
    update = jax.jit(lambda e, p, t: e.update(p, t))
    for t in range(1, 301):
        ema = update(ema, jnp.asarray(traj[t - 1]), t)
    for s, p in zip(ema.sigma_rels, ema.params, strict=True):
        np.testing.assert_allclose(p, _weights(300, s) @ traj, rtol=1e-11, atol=1e-12)


def test_train_step_tracks_power_ema_and_checkpoints_keep_it(tmp_path):
    # A ramp: loss -sum(p) with SGD(1) moves every parameter by exactly +1 per step, so after k
    # steps p = p0 + k and the power EMA at t is p0 + sum_k k w_k(t).
    net = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    tx = optax.sgd(1.0)
    graphdef, state = training.init_train_state(net, tx, jax.random.PRNGKey(0), power_ema=(0.05, 0.10))
    p0 = jax.tree.map(np.asarray, state.params)
    step = training.make_train_step(
        lambda m, b, k: -jnp.sum(m.kernel[...]) - jnp.sum(m.bias[...]) + 0.0 * b[:, 0],
        graphdef,
        tx,
        grad_clip_norm=None,
    )
    for _ in range(40):
        state, _ = step(state, jnp.zeros((2, 1)))
    for s, prof in zip(state.power_ema.sigma_rels, state.power_ema.params, strict=True):
        shift = _weights(40, s) @ np.arange(1.0, 41.0)
        for got, init in zip(jax.tree.leaves(prof), jax.tree.leaves(p0), strict=True):
            np.testing.assert_allclose(got, init + shift, rtol=1e-5)
    # the profiles are part of the train state: a checkpoint restores them
    ckpt = checkpoint.Checkpointer(str(tmp_path / "ckpt"), save_every=1, async_save=False)
    ckpt.save(40, state)
    _, fresh = training.init_train_state(net, tx, jax.random.PRNGKey(0), power_ema=(0.05, 0.10))
    back = ckpt.restore(fresh)
    ckpt.close()
    for a, b in zip(jax.tree.leaves(back.power_ema), jax.tree.leaves(state.power_ema), strict=True):
        np.testing.assert_array_equal(a, b)
    # snapshots round-trip and the reconstruction returns the parameter structure
    path = P.save_snapshot(str(tmp_path / "phema"), 40, state.power_ema)
    assert path.endswith("phema_000000040.npz")
    snaps = P.load_snapshots(str(tmp_path / "phema"))
    assert [(s.step, s.sigma_rel) for s in snaps] == [(40, 0.05), (40, 0.10)]
    rec = P.reconstruct(snaps, 0.10, template=state.params)
    for a, b in zip(jax.tree.leaves(rec), jax.tree.leaves(state.power_ema.params[1]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    with pytest.raises(FileNotFoundError, match="posthoc_ema.sigma_rels"):
        P.load_snapshots(str(tmp_path / "none"))


# Reconstruction error on the synthetic trajectory for three target lengths (the measured values,
# `python -m pytest tests/test_evaluation_phema.py -s` prints them; docs/evaluation.md quotes them).
TARGETS = {0.04: (1.5e-2, 6e-3), 0.07: (1e-2, 3e-3), 0.15: (1.5e-2, 3e-3)}


def test_posthoc_reconstruction_matches_the_closed_form_ema():
    # Weights drift like a training run (log and sqrt trends, a random walk, step noise); profiles
    # sigma_rel 0.05 and 0.10 are tracked by the train-time update and snapshotted every 256 of
    # 4096 steps (16 x 2 snapshots). Other lengths are rebuilt from the snapshots and compared with
    # their exact power EMA sum_k w_k theta_k.
    rng = np.random.default_rng(0)
    n, d, every = 4096, 32, 256
    k = np.arange(1, n + 1, dtype=np.float64)[:, None]
    traj = (
        np.log(k) * rng.standard_normal(d)
        + np.sqrt(k) * rng.standard_normal(d) / 25
        + 0.05 * np.cumsum(rng.standard_normal((n, d)), 0)
        + 0.2 * rng.standard_normal((n, d))
    )
    ema = P.PowerEMA.init(jnp.zeros(d), (0.05, 0.10))
    update = jax.jit(lambda e, p, t: e.update(p, t))
    snaps = []
    for t in range(1, n + 1):
        ema = update(ema, jnp.asarray(traj[t - 1]), t)
        if t % every == 0:
            snaps += [P.Snapshot(t, s, {"w": np.asarray(p)}) for s, p in zip(ema.sigma_rels, ema.params, strict=True)]
    times, sigmas = [s.step for s in snaps], [s.sigma_rel for s in snaps]
    # the stored lengths themselves come back exactly
    np.testing.assert_allclose(P.reconstruct(snaps, 0.05)["w"], _weights(n, 0.05) @ traj, rtol=1e-9)
    for target, (max_profile_err, max_weight_err) in TARGETS.items():
        exact = _weights(n, target) @ traj
        got = P.reconstruct(snaps, target)["w"]
        # error relative to how far the average moves the weights from the final iterate
        weight_err = np.linalg.norm(got - exact) / np.linalg.norm(exact - traj[-1])
        profile_err = P.profile_error(times, sigmas, n, target)
        print(f"sigma_rel {target}: profile L2 error {profile_err:.2e}, weight error {weight_err:.2e}")
        assert profile_err < max_profile_err and weight_err < max_weight_err
    # a target time before the end: only the snapshots up to it are used
    mid = P.reconstruct(snaps, 0.07, step=2048)["w"]
    assert np.linalg.norm(mid - _weights(2048, 0.07) @ traj[:2048]) < 1e-2 * np.linalg.norm(
        _weights(2048, 0.07) @ traj[:2048] - traj[2047]
    )
