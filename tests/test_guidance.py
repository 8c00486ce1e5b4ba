"""Guidance combinators against the exact Gaussian-mixture oracle.

The mixture (helpers.mixture_2d) has two classes, so its class-conditional model, its
unconditional model and its exact noisy classifier p_t(c | x) are all known in closed
form. Identities checked here:
  * classifier guidance with the exact classifier and scale 1 == the conditional model;
  * CFG with w == classifier guidance with scale w (score_u + w (score_c - score_u));
  * CFG w = 1 == conditional, w = 0 == unconditional, interval (0, 0] == unguided;
  * every combination space gives the same model without rescale;
  * sampling with the guided model reproduces p_0(x | c).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import all_paths, count_compiles, mixture_2d

from jdiff import guidance, predictions
from jdiff.predictions import KINDS

PATHS = all_paths()
SOME_PATHS = ["vp_linear", "ve", "linear", "custom"]
N = 64


def _oracle(gm, path, kind):
    """The exact model with a null class: cond == num_classes selects the unconditional model."""
    uncond = gm.as_model(path, kind)
    null = gm.num_classes

    def model(x, t, cond=None):
        if cond is None:
            return uncond(x, t)
        cond = jnp.asarray(cond)
        # The conditional prediction is NaN for the null class (no component): evaluate it on a
        # valid class there and select the unconditional one instead.
        pc = uncond(x, t, jnp.minimum(cond, null - 1))
        return jnp.where((cond == null)[:, None], uncond(x, t), pc)

    return model


def _exact_log_prob(gm, path):
    """log p_t(c | x) of each example: the exact noisy classifier."""

    def log_prob_fn(x, t, cond):
        tb = jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:1])
        return jax.vmap(lambda xi, ti, ci: gm.class_log_posterior(xi, ti, path)[ci])(x, tb, cond)

    return log_prob_fn


def _points(key, gm, path, t, n=N):
    """Points spread like p_t (x_t = a x0 + s eps with x0 from the data)."""
    k0, k1 = jax.random.split(key)
    x0 = gm.sample(k0, n)
    return path.marginal(k1, x0, jnp.full((n,), t))[0]


def _close(a, b, rtol, atol):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)


# -- exact identities ----------------------------------------------------------------------


@pytest.mark.parametrize("path_name", SOME_PATHS)
def test_classifier_guidance_scale_one_is_conditional(path_name):
    """Unconditional oracle + grad log p_t(c|x) of the exact classifier == conditional oracle."""
    gm, path = mixture_2d(), PATHS[path_name]
    cond = jnp.arange(N) % 2
    worst = 0.0
    for kind in KINDS:
        uncond = gm.as_model(path, kind)
        guided = guidance.classifier_guidance(
            lambda x, t, c, m=uncond: m(x, t), kind, path, _exact_log_prob(gm, path), 1.0
        )
        cond_model = gm.as_model(path, kind)
        for i, t in enumerate([0.05, 0.3, 0.6, 0.9]):
            x = _points(jax.random.PRNGKey(i), gm, path, t)
            got, want = guided(x, t, cond), cond_model(x, t, cond)
            scale = float(jnp.max(jnp.abs(want)))
            worst = max(worst, float(jnp.max(jnp.abs(got - want))) / scale)
            _close(got, want, rtol=1e-9, atol=1e-9 * scale)
        # per-example times
        t = jnp.linspace(0.1, 0.9, N)
        x = _points(jax.random.PRNGKey(9), gm, path, 0.5)
        _close(guided(x, t, cond), cond_model(x, t, cond), rtol=1e-9, atol=1e-9)
    assert worst < 1e-9


@pytest.mark.parametrize("path_name", SOME_PATHS)
def test_cfg_weight_is_classifier_scale(path_name):
    """For the oracle, CFG with weight w is classifier guidance with scale w; w = 1 is the
    conditional model, w = 0 the unconditional one."""
    gm, path = mixture_2d(), PATHS[path_name]
    cond = jnp.arange(N) % 2
    for kind in KINDS:
        model = _oracle(gm, path, kind)
        x = _points(jax.random.PRNGKey(1), gm, path, 0.4)
        for t in [0.2, 0.7]:
            want_c, want_u = model(x, t, cond), model(x, t, None)
            cfg = lambda w: guidance.classifier_free(model, kind, path, w, null_cond=gm.num_classes)  # noqa: E731
            _close(cfg(1.0)(x, t, cond), want_c, rtol=1e-12, atol=1e-12)
            _close(cfg(0.0)(x, t, cond), want_u, rtol=1e-12, atol=1e-12)
            cg = guidance.classifier_guidance(
                lambda x_, t_, c_: model(x_, t_, None), kind, path, _exact_log_prob(gm, path), 3.0
            )
            _close(cfg(3.0)(x, t, cond), cg(x, t, cond), rtol=1e-9, atol=1e-9)


def test_cfg_is_one_batched_call_and_matches_two_calls():
    gm, path, kind = mixture_2d(), PATHS["vp_cosine"], "eps"
    oracle = _oracle(gm, path, kind)
    calls = []

    def model(x, t, cond):
        calls.append((x.shape, jnp.shape(t), None if cond is None else cond.shape))
        return oracle(x, t, cond)

    cond = jnp.arange(N) % 2
    x = _points(jax.random.PRNGKey(2), gm, path, 0.5)
    for t in [jnp.asarray(0.5), jnp.full((N,), 0.5)]:
        calls.clear()
        batched = guidance.classifier_free(model, kind, path, 2.5, null_cond=gm.num_classes)(x, t, cond)
        assert calls == [((2 * N, 2), (2 * N,) if t.ndim else (), (2 * N,))]
        two_calls = guidance.classifier_free(oracle, kind, path, 2.5, null_cond=None)(x, t, cond)
        _close(batched, two_calls, rtol=1e-13, atol=1e-13)


def test_null_cond_is_a_tree_prefix():
    """A dict condition with one null value per leaf, and a single null broadcast to all leaves."""
    seen = []

    def model(x, t, cond):
        seen.append(cond)
        return x * (1.0 + cond["a"][:, None] + cond["b"][:, None])

    x = jnp.ones((3, 2))
    cond = {"a": jnp.array([1, 2, 3]), "b": jnp.array([0.5, 0.5, 0.5])}
    g = guidance.classifier_free(model, "x0", PATHS["linear"], 2.0, null_cond={"a": 0, "b": 0.0})
    out = g(x, 0.5, cond)
    np.testing.assert_array_equal(seen[-1]["a"], [1, 2, 3, 0, 0, 0])
    # neg = x, pos = x (1.5 + a): guided = x + 2 (0.5 + a) x
    np.testing.assert_allclose(out, x * (1.0 + 2.0 * (0.5 + cond["a"][:, None])))
    guidance.classifier_free(model, "x0", PATHS["linear"], 2.0, null_cond=0)(x, 0.5, cond)
    np.testing.assert_array_equal(seen[-1]["b"], [0.5, 0.5, 0.5, 0.0, 0.0, 0.0])


def test_guidance_interval():
    """interval=(0, 0) is the unguided (conditional) model at every t, 0 and 1 included;
    (t_lo, t_hi] guides exactly inside, per example."""
    gm, path, kind = mixture_2d(), PATHS["trig"], "v"
    model = _oracle(gm, path, kind)
    cond = jnp.arange(N) % 2
    x = _points(jax.random.PRNGKey(3), gm, path, 0.5)
    full = guidance.classifier_free(model, kind, path, 4.0, null_cond=2)
    off = guidance.classifier_free(model, kind, path, 4.0, null_cond=2, interval=(0.0, 0.0))
    for t in [0.0, 1e-4, 0.5, 1.0 - 1e-4]:
        _close(off(x, t, cond), model(x, t, cond), rtol=1e-12, atol=1e-12)
    assert float(jnp.max(jnp.abs(full(x, 0.5, cond) - model(x, 0.5, cond)))) > 0.1  # guidance does act
    win = guidance.classifier_free(model, kind, path, 4.0, null_cond=2, interval=(0.3, 0.6))
    t = jnp.linspace(0.05, 0.95, N)
    inside = (t > 0.3) & (t <= 0.6)
    want = jnp.where(inside[:, None], full(x, t, cond), model(x, t, cond))
    _close(win(x, t, cond), want, rtol=1e-12, atol=1e-12)
    assert 0 < int(inside.sum()) < N
    # classifier guidance: scale 0 outside the interval
    cg = guidance.classifier_guidance(
        lambda x_, t_, c_: model(x_, t_, None), kind, path, _exact_log_prob(gm, path), 1.0, interval=(0.0, 0.0)
    )
    _close(cg(x, t, cond), model(x, t, None), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_combination_space_does_not_matter_without_rescale(kind):
    gm, path = mixture_2d(), PATHS["vp_linear"]
    model = _oracle(gm, path, kind)
    cond = jnp.arange(N) % 2
    x = _points(jax.random.PRNGKey(4), gm, path, 0.5)
    t = jnp.linspace(0.1, 0.9, N)
    ref = guidance.classifier_free(model, kind, path, 3.0, null_cond=2)(x, t, cond)
    for space in KINDS:
        got = guidance.classifier_free(model, kind, path, 3.0, null_cond=2, space=space)(x, t, cond)
        _close(got, ref, rtol=1e-10, atol=1e-10)


def test_cfg_rescale():
    """phi = 1 matches the guided per-example std to the conditional one in `space`; phi blends
    linearly; unlike plain CFG, the result depends on the space."""
    gm, path, kind = mixture_2d(), PATHS["vp_linear"], "eps"
    model = _oracle(gm, path, kind)
    cond = jnp.arange(N) % 2
    x = _points(jax.random.PRNGKey(5), gm, path, 0.5)
    t, w = 0.5, 5.0
    plain = guidance.classifier_free(model, kind, path, w, null_cond=2)(x, t, cond)
    pos = model(x, t, cond)
    full = guidance.classifier_free(model, kind, path, w, null_cond=2, rescale=1.0)(x, t, cond)
    _close(jnp.std(full, axis=1), jnp.std(pos, axis=1), rtol=1e-12, atol=0)
    _close(full, plain * (jnp.std(pos, axis=1) / jnp.std(plain, axis=1))[:, None], rtol=1e-12, atol=0)
    part = guidance.classifier_free(model, kind, path, w, null_cond=2, rescale=0.7)(x, t, cond)
    _close(part, 0.7 * full + 0.3 * plain, rtol=1e-12, atol=1e-12)
    in_x0 = guidance.classifier_free(model, kind, path, w, null_cond=2, rescale=1.0, space="x0")(x, t, cond)
    x0 = predictions.convert(in_x0, kind, "x0", x, t, path)
    _close(jnp.std(x0, axis=1), jnp.std(gm.as_model(path, "x0")(x, t, cond), axis=1), rtol=1e-10, atol=0)
    assert float(jnp.max(jnp.abs(in_x0 - full))) > 1e-2
    # w = 1: nothing to rescale
    one = guidance.classifier_free(model, kind, path, 1.0, null_cond=2, rescale=0.7)(x, t, cond)
    _close(one, pos, rtol=1e-12, atol=1e-12)


def test_autoguidance():
    """D_weak + w (D_main - D_weak) for a main and a weak model of different kinds; with the
    unconditional oracle as the 'weak' model it is CFG."""
    gm, path = mixture_2d(), PATHS["linear"]
    weak_gm = type(gm)(gm.weights, gm.means, gm.covs * 3.0 + 0.05 * jnp.eye(2)[None], labels=gm.labels)
    main, weak = gm.as_model(path, "x0"), weak_gm.as_model(path, "eps")
    cond = jnp.arange(N) % 2
    x = _points(jax.random.PRNGKey(6), gm, path, 0.5)
    t = jnp.linspace(0.1, 0.9, N)
    g = guidance.autoguidance(main, weak, "x0", path, 2.0, weak_kind="eps")
    weak_x0 = weak_gm.as_model(path, "x0")(x, t, cond)
    _close(g(x, t, cond), weak_x0 + 2.0 * (main(x, t, cond) - weak_x0), rtol=1e-10, atol=1e-10)
    _close(guidance.autoguidance(main, weak, "x0", path, 1.0, weak_kind="eps")(x, t, cond), main(x, t, cond), 1e-12, 1e-12)
    model = _oracle(gm, path, "velocity")
    ag = guidance.autoguidance(model, lambda x_, t_, c_: model(x_, t_, None), "velocity", path, 2.5)
    cfg = guidance.classifier_free(model, "velocity", path, 2.5, null_cond=2)
    _close(ag(x, t, cond), cfg(x, t, cond), rtol=1e-12, atol=1e-12)


# -- sampling ----------------------------------------------------------------------------


def _heun_pf_ode(model, kind, path, x, cond, n_steps):
    """Deterministic Heun on the PF-ODE, t_max -> t_min on a uniform grid (test-local)."""
    ts = jnp.linspace(path.t_max, path.t_min, n_steps + 1)

    def vel(x, t):
        return predictions.pf_ode_velocity(model(x, t, cond), kind, x, t, path)

    def step(x, tt):
        t0, t1 = tt
        h = t1 - t0
        d0 = vel(x, t0)
        x1 = x + h * d0
        return x + 0.5 * h * (d0 + vel(x1, t1)), None

    return jax.lax.scan(step, x, (ts[:-1], ts[1:]))[0]


def _class_moments(gm, c):
    w = jnp.where(gm.labels == c, gm.weights, 0.0)
    w = w / w.sum()
    mean = w @ gm.means
    d = gm.means - mean[None]
    cov = jnp.einsum("k,kij->ij", w, gm.covs) + jnp.einsum("k,ki,kj->ij", w, d, d)
    return mean, cov


def test_classifier_guided_sampling_reproduces_class_distribution():
    """2000 PF-ODE samples of the exactly guided unconditional oracle: pathwise equal to
    sampling the conditional oracle from the same noise, and matching p_0(x | c) in mean
    (4 standard errors) and component occupancy (4 binomial standard errors)."""
    gm, path, kind, n = mixture_2d(), PATHS["vp_cosine"], "eps", 2000
    cond = jnp.zeros((n,), jnp.int32)  # class 0: components 0 (w 0.5) and 1 (w 0.3)
    uncond = gm.as_model(path, kind)
    guided = guidance.classifier_guidance(lambda x, t, c: uncond(x, t), kind, path, _exact_log_prob(gm, path), 1.0)
    x_T = path.prior_sample(jax.random.PRNGKey(7), (n, 2), jnp.float64)
    run = jax.jit(lambda m: _heun_pf_ode(m, kind, path, x_T, cond, 60), static_argnums=0)
    xs = run(guided)
    xc = run(gm.as_model(path, kind))
    assert float(jnp.max(jnp.abs(xs - xc))) < 1e-6
    mean, cov = _class_moments(gm, 0)
    se = jnp.sqrt(jnp.diag(cov) / n)
    assert bool(jnp.all(jnp.abs(xs.mean(0) - mean) < 4 * se)), (xs.mean(0), mean, se)
    frac = float(jnp.mean(xs[:, 0] > 0.1))  # component 1 sits at x = 1.2, component 0 at -1.0
    p = 0.3 / 0.8
    assert abs(frac - p) < 4 * np.sqrt(p * (1 - p) / n), frac
    post = jax.vmap(lambda xi: gm.class_log_posterior(xi, path.t_min, path))(xs)
    assert float(jnp.mean(jnp.exp(post[:, 0]))) > 0.995


# -- training pieces -----------------------------------------------------------------------


def test_noisy_classifier_loss_is_minimized_by_the_exact_posterior():
    """With common random numbers, the exact noisy posterior at the loss's t beats the same
    posterior tempered, and beats the posterior of a different noise level: the loss is the
    cross-entropy of p_t(c | x_t) with x_t ~ p(x_t | x0) at the given t."""
    gm, path, n = mixture_2d(), PATHS["vp_linear"], 4000
    key = jax.random.PRNGKey(8)
    x0, comp = gm.sample(jax.random.PRNGKey(9), n, return_components=True)
    labels = gm.labels[comp]
    t = jnp.full((n,), 0.55)

    def exact(temp=1.0, shift=0.0):
        return lambda x, t_: jax.vmap(lambda xi, ti: gm.class_log_posterior(xi, ti + shift, path))(x, t_) / temp

    base = jnp.mean(guidance.noisy_classifier_loss(exact(), path, key, x0, labels, t))
    for fn in [exact(temp=0.7), exact(temp=1.4), exact(shift=-0.3), exact(shift=0.3)]:
        other = jnp.mean(guidance.noisy_classifier_loss(fn, path, key, x0, labels, t))
        assert float(other - base) > 1e-3, (other, base)
    # Random times: uniform on [t_min, t_max], one per example.
    seen = []
    loss = guidance.noisy_classifier_loss(lambda x, t_: seen.append(t_) or exact()(x, t_), path, key, x0, labels)
    assert loss.shape == (n,) and bool(jnp.all(jnp.isfinite(loss)))
    ts = seen[0]
    assert ts.shape == (n,) and float(ts.min()) >= path.t_min and float(ts.max()) <= path.t_max
    assert abs(float(ts.mean()) - 0.5) < 4 * np.sqrt(1 / 12 / n)


def test_drop_labels():
    key = jax.random.PRNGKey(10)
    labels = jnp.arange(20000, dtype=jnp.int32) % 10
    out = guidance.drop_labels(key, labels, 0.2, 10)
    assert out.dtype == labels.dtype and out.shape == labels.shape
    dropped = out == 10
    np.testing.assert_array_equal(out[~dropped], labels[~dropped])
    frac = float(dropped.mean())
    assert abs(frac - 0.2) < 4 * np.sqrt(0.2 * 0.8 / labels.size), frac
    np.testing.assert_array_equal(guidance.drop_labels(key, labels, 0.0, 10), labels)
    assert bool(jnp.all(guidance.drop_labels(key, labels, 1.0, 10) == 10))


# -- compilation and errors ----------------------------------------------------------------


def test_new_weight_does_not_recompile():
    gm, path, kind = mixture_2d(), PATHS["vp_linear"], "x0"
    model = _oracle(gm, path, kind)
    x = _points(jax.random.PRNGKey(11), gm, path, 0.5)
    cond = jnp.arange(N) % 2

    @jax.jit
    def f(w, t):
        return guidance.classifier_free(model, kind, path, w, null_cond=2, interval=(0.2, 0.8), rescale=0.5)(x, t, cond)

    y2 = f(2.0, 0.5)
    with count_compiles() as compiles:
        y3 = f(3.0, 0.4)
    assert compiles() == 0
    assert bool(jnp.all(jnp.isfinite(y3))) and float(jnp.max(jnp.abs(y3 - y2))) > 0


def test_float32_ends_are_finite():
    """Guidance in the model's own space adds no conversion: finite at t_min and t_max in float32."""
    gm = mixture_2d(jnp.float32)
    for name, path in PATHS.items():
        for kind in KINDS:
            model = _oracle(gm, path, kind)
            x = path.prior_sample(jax.random.PRNGKey(12), (8, 2), jnp.float32)
            g = guidance.classifier_free(model, kind, path, 3.0, null_cond=2, rescale=0.7)
            for t in [path.t_min, path.t_max]:
                out = g(x, jnp.float32(t), jnp.arange(8) % 2)
                assert out.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out))), (name, kind, t)


def test_errors_name_the_argument():
    path = PATHS["linear"]
    model = lambda x, t, c: x  # noqa: E731
    with pytest.raises(ValueError, match="kind"):
        guidance.classifier_free(model, "noise", path, 2.0, null_cond=0)
    with pytest.raises(ValueError, match="space"):
        guidance.classifier_free(model, "eps", path, 2.0, null_cond=0, space="logits")
    with pytest.raises(ValueError, match="interval"):
        guidance.classifier_free(model, "eps", path, 2.0, null_cond=0, interval=0.5)
    with pytest.raises(ValueError, match="weak_kind"):
        guidance.autoguidance(model, model, "eps", path, 2.0, weak_kind="noise")
    with pytest.raises(ValueError, match="cond"):
        guidance.classifier_free(model, "eps", path, 2.0, null_cond=0)(jnp.ones((2, 2)), 0.5, None)
