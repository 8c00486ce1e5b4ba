"""Guidance combinators against the exact Gaussian-mixture oracle.

The mixture (helpers.mixture_2d) has two classes, so its class-conditional model, its
unconditional model and its exact noisy classifier p_t(c | x) are all known in closed
form. Identities checked here:
  * classifier guidance with the exact classifier and scale 1 == the conditional model;
  * CFG with w == classifier guidance with scale w (score_u + w (score_c - score_u));
  * CFG w = 1 == conditional, w = 0 == unconditional, interval (0, 0] == unguided;
  * every combination space gives the same model without rescale;
  * a guided model is a jdiff.Model: it composes (CFG of CFG multiplies the weights), passes
    through jax.jit as an argument, and through every sampler;
  * sampling with the guided model reproduces p_0(x | c).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import all_paths, count_compiles, mixture_2d, null_class_oracle

from experiments import _names
from jdiff import Model, guidance, predictions, samplers
from jdiff.paths import expand_to
from jdiff.predictions import KINDS

PATHS = all_paths()
N = 64


_oracle = null_class_oracle


def _exact_log_prob(gm, path):
    """log p_t(c | x) of each example: the exact noisy classifier."""

    def log_prob_fn(x, t, cond):
        tb = jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:1])
        return jax.vmap(lambda xi, ti, ci: gm.class_log_posterior(xi, ti, path)[ci])(x, tb, cond)

    return log_prob_fn


def _close(a, b, rtol, atol):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol, atol=atol)


# -- exact identities (oracle; each test is one jitted program) -----------------------------


def _cg(gm, path, kind, scale, **kw):
    """Classifier guidance of the unconditional oracle with the exact noisy classifier."""
    uncond = gm.as_model(path, kind)
    model = Model(lambda x, t, c: uncond(x, t), path, kind)
    return guidance.classifier_guidance(model, _exact_log_prob(gm, path), scale, **kw)


def _rel_err(a, b):
    return jnp.max(jnp.abs(a - b)) / jnp.maximum(jnp.max(jnp.abs(b)), 1.0)


def _times_and_points(gm, path, n=N):
    """Per-example times spread over (0, 1) and points x_t ~ p_t at those times."""
    t = jnp.linspace(0.05, 0.95, n)
    k0, k1 = jax.random.split(jax.random.PRNGKey(0))
    return path.marginal(k1, gm.sample(k0, n), t)[0], t


@pytest.mark.parametrize("path_name", ["vp_cosine", "linear"])
def test_classifier_guidance_scale_one_is_conditional(path_name):
    """Unconditional oracle + grad log p_t(c|x) of the exact classifier == conditional oracle,
    for every kind, with one t per example in [0.05, 0.95]."""
    gm, path = mixture_2d(), PATHS[path_name]
    x, t = _times_and_points(gm, path)
    cond = jnp.arange(N) % 2

    @jax.jit
    def errors(x, t):
        return jnp.stack([_rel_err(_cg(gm, path, k, 1.0)(x, t, cond), gm.as_model(path, k)(x, t, cond)) for k in KINDS])

    err = errors(x, t)
    assert float(err.max()) < 1e-10, dict(zip(KINDS, err.tolist()))


def test_cfg_identities():
    """For the oracle, with one weight per example (w = 1, 0, 3 cycling): CFG w = 1 ==
    conditional, w = 0 == unconditional, and CFG with weight w == classifier guidance with
    scale w for every w (both are score_u + w (score_c - score_u)), every kind."""
    gm, path = mixture_2d(), PATHS["ve"]
    x, t = _times_and_points(gm, path)
    cond = jnp.arange(N) % 2
    w = jnp.array([1.0, 0.0, 3.0])[jnp.arange(N) % 3]

    @jax.jit
    def errors(x, t):
        out = []
        for k in KINDS:
            model = _oracle(gm, path, k)
            cfg = guidance.classifier_free(model, w, null_cond=gm.num_classes)(x, t, cond)
            want = jnp.where((w == 1.0)[:, None], model(x, t, cond), model(x, t, None))
            out.append(_rel_err(jnp.where((w < 2)[:, None], cfg, want), want))  # the w = 0 and w = 1 rows
            out.append(_rel_err(cfg, _cg(gm, path, k, w)(x, t, cond)))
        return jnp.stack(out)

    err = errors(x, t).reshape(5, 2)
    assert float(err[:, 0].max()) < 1e-13, err
    assert float(err[:, 1].max()) < 1e-10, err


# -- combinator structure (a cheap nonlinear toy model) -------------------------------------


def _toy(x, t, cond):
    """A smooth conditional 'network': cond == 2 plays the null class."""
    c = jnp.broadcast_to(jnp.asarray(cond, x.dtype), x.shape[:1])[:, None]
    tt = expand_to(jnp.asarray(t, x.dtype), x)
    return jnp.tanh(x * (1.0 + 0.5 * c) + tt) + 0.3 * c * x[:, ::-1] - 0.2 * tt * x


def _toy_points(n=N, dtype=jnp.float64):
    return jax.random.normal(jax.random.PRNGKey(3), (n, 2), dtype), jnp.arange(n) % 2


def test_guided_models_are_models_and_compose():
    """Every combinator returns a jdiff.Model on the same path with the same kind; its views
    work; and CFG of a CFG-guided model multiplies the weights: the inner model at the null
    class is the unconditional one, so outer = D_null + w2 w1 (D_c - D_null)."""
    path, kind = PATHS["vp_cosine"], "eps"
    toy = Model(_toy, path, kind)
    x, cond = _toy_points()
    t = jnp.linspace(0.1, 0.9, N)
    log_prob = lambda x_, t_, c_: -jnp.sum(x_**2, axis=1)
    for guided in (
        guidance.classifier_free(toy, 2.0, null_cond=2),
        guidance.autoguidance(toy, toy, 2.0),
        guidance.classifier_guidance(toy, log_prob, 1.0),
    ):
        assert isinstance(guided, Model) and guided.path is path and guided.kind == kind
        assert guided.x0(x, t, cond).shape == x.shape
    twice = guidance.classifier_free(guidance.classifier_free(toy, 1.5, null_cond=2), 2.0, null_cond=2)
    want = _toy(x, t, 2) + 3.0 * (_toy(x, t, cond) - _toy(x, t, 2))
    _close(twice(x, t, cond), want, rtol=1e-13, atol=1e-13)


def test_cfg_is_one_batched_call_and_matches_two_calls():
    path, kind = PATHS["vp_cosine"], "eps"
    calls = []

    def net(x, t, cond):
        calls.append((x.shape, jnp.shape(t), None if cond is None else cond.shape))
        return _toy(x, t, 2 if cond is None else cond)

    model = Model(net, path, kind)
    x, cond = _toy_points()
    for t in [jnp.asarray(0.5), jnp.full((N,), 0.5)]:
        calls.clear()
        batched = guidance.classifier_free(model, 2.5, null_cond=2)(x, t, cond)
        assert calls == [((2 * N, 2), (2 * N,) if t.ndim else (), (2 * N,))]
        two_calls = guidance.classifier_free(model, 2.5, null_cond=None)(x, t, cond)
        want = _toy(x, t, 2) + 2.5 * (_toy(x, t, cond) - _toy(x, t, 2))
        _close(batched, want, rtol=1e-14, atol=1e-14)
        _close(two_calls, want, rtol=1e-14, atol=1e-14)


def test_null_cond_is_a_tree_prefix():
    """A dict condition with one null value per leaf, and a single null broadcast to all leaves."""
    seen = []

    def net(x, t, cond):
        seen.append(cond)
        return x * (1.0 + cond["a"][:, None] + cond["b"][:, None])

    model = Model(net, PATHS["linear"], "x0")
    x = jnp.ones((3, 2))
    cond = {"a": jnp.array([1, 2, 3]), "b": jnp.array([0.5, 0.5, 0.5])}
    g = guidance.classifier_free(model, 2.0, null_cond={"a": 0, "b": 0.0})
    out = g(x, 0.5, cond)
    np.testing.assert_array_equal(seen[-1]["a"], [1, 2, 3, 0, 0, 0])
    # neg = x, pos = x (1.5 + a): guided = x + 2 (0.5 + a) x
    np.testing.assert_allclose(out, x * (1.0 + 2.0 * (0.5 + cond["a"][:, None])))
    guidance.classifier_free(model, 2.0, null_cond=0)(x, 0.5, cond)
    np.testing.assert_array_equal(seen[-1]["b"], [0.5, 0.5, 0.5, 0.0, 0.0, 0.0])


def test_guidance_interval():
    """interval=(0, 0) is the unguided (conditional) model at every t, 0 and 1 included;
    (t_lo, t_hi] guides exactly inside, per example; classifier guidance likewise."""
    path, kind = PATHS["trig"], "v"
    toy = Model(_toy, path, kind)
    x, cond = _toy_points()
    full = guidance.classifier_free(toy, 4.0, null_cond=2)
    off = guidance.classifier_free(toy, 4.0, null_cond=2, interval=(0.0, 0.0))
    for t in [0.0, 1e-4, 0.5, 1.0]:
        _close(off(x, t, cond), _toy(x, t, cond), rtol=1e-14, atol=1e-14)  # neg + 1 (pos - neg)
    assert float(jnp.max(jnp.abs(full(x, 0.5, cond) - _toy(x, 0.5, cond)))) > 0.1  # guidance does act
    win = guidance.classifier_free(toy, 4.0, null_cond=2, interval=(0.3, 0.6))
    t = jnp.linspace(0.0, 1.0, N + 1)[1:]
    inside = (t > 0.3) & (t <= 0.6)
    want = jnp.where(inside[:, None], full(x, t, cond), _toy(x, t, cond))
    _close(win(x, t, cond), want, rtol=1e-14, atol=1e-14)
    assert 0 < int(inside.sum()) < N
    log_prob = lambda x_, t_, c_: -jnp.sum(x_**2, axis=1)
    cg_off = guidance.classifier_guidance(toy, log_prob, 1.0, interval=(0.0, 0.0))
    np.testing.assert_allclose(cg_off(x, t, cond), _toy(x, t, cond), rtol=1e-12, atol=1e-12)
    cg_win = guidance.classifier_guidance(toy, log_prob, 1.0, interval=(0.3, 0.6))
    cg_full = guidance.classifier_guidance(toy, log_prob, 1.0)
    want = jnp.where(inside[:, None], cg_full(x, t, cond), _toy(x, t, cond))
    np.testing.assert_allclose(cg_win(x, t, cond), want, rtol=1e-12, atol=1e-12)


def test_classifier_guidance_adds_scaled_gradient_to_the_score():
    """log p(c|x) = -|x - m_c|^2 / 2 has gradient m_c - x: the guided score is score + scale (m_c - x)."""
    path = PATHS["vp_linear"]
    x, cond = _toy_points()
    m = jnp.array([[1.0, -2.0], [0.5, 3.0]])
    log_prob = lambda x_, t_, c_: -0.5 * jnp.sum((x_ - m[c_]) ** 2, axis=1)
    t = jnp.linspace(0.1, 0.9, N)
    scale = jnp.linspace(0.0, 2.0, N)  # one scale per example
    for kind in KINDS:
        g = guidance.classifier_guidance(Model(_toy, path, kind), log_prob, scale)(x, t, cond)
        score = predictions.convert(_toy(x, t, cond), kind, "score", x, t, path)
        want = predictions.convert(score + scale[:, None] * (m[cond] - x), "score", kind, x, t, path)
        _close(g, want, rtol=1e-12, atol=1e-12)


def test_classifier_guidance_is_finite_where_the_scale_is_zero():
    """On the rectified-flow path alpha(t) -> 0 at t -> 1, where a score shift moves x0_hat by
    sigma^2 / alpha: with scale 0 (here outside the interval) the guided x0 model is the
    model's own prediction, finite in float32 up to t = 1."""
    path = PATHS["linear"]
    x, cond = _toy_points(8, jnp.float32)
    log_prob = lambda x_, t_, c_: -jnp.sum(x_**2, axis=1)
    g = guidance.classifier_guidance(Model(_toy, path, "x0"), log_prob, 2.0, interval=(0.0, 0.5))
    for t in (jnp.float32(path.t_max), jnp.float32(1.0)):
        out = g(x, t, cond)
        assert out.dtype == jnp.float32
        np.testing.assert_array_equal(out, _toy(x, t, cond).astype(jnp.float32))


@pytest.mark.parametrize("kind", KINDS)
def test_combination_space_does_not_matter_without_rescale(kind):
    path = PATHS["vp_linear"]
    toy = Model(_toy, path, kind)
    x, cond = _toy_points()
    t = jnp.linspace(0.1, 0.9, N)
    ref = guidance.classifier_free(toy, 3.0, null_cond=2)(x, t, cond)
    for space in KINDS:
        got = guidance.classifier_free(toy, 3.0, null_cond=2, space=space)(x, t, cond)
        _close(got, ref, rtol=1e-11, atol=1e-11)


def test_cfg_rescale():
    """phi = 1 matches the guided per-example std to the conditional one in `space`; phi blends
    linearly; w = 1 is untouched; unlike plain CFG, the result depends on the space."""
    path, kind = PATHS["vp_linear"], "eps"
    toy = Model(_toy, path, kind)
    x, cond = _toy_points()
    t, w = 0.5, 5.0
    cfg = lambda **kw: guidance.classifier_free(toy, w, null_cond=2, **kw)(x, t, cond)
    plain, pos = cfg(), _toy(x, t, cond)
    full = cfg(rescale=1.0)
    _close(jnp.std(full, axis=1), jnp.std(pos, axis=1), rtol=1e-12, atol=0)
    _close(full, plain * (jnp.std(pos, axis=1) / jnp.std(plain, axis=1))[:, None], rtol=1e-12, atol=0)
    _close(cfg(rescale=0.7), 0.7 * full + 0.3 * plain, rtol=1e-12, atol=1e-12)
    in_x0 = cfg(rescale=1.0, space="x0")
    to_x0 = lambda p: predictions.convert(p, kind, "x0", x, t, path)
    _close(jnp.std(to_x0(in_x0), axis=1), jnp.std(to_x0(pos), axis=1), rtol=1e-10, atol=0)
    assert float(jnp.max(jnp.abs(in_x0 - full))) > 1e-2
    one = guidance.classifier_free(toy, 1.0, null_cond=2, rescale=0.7)(x, t, cond)
    _close(one, pos, rtol=1e-11, atol=1e-11)


def test_autoguidance():
    """D_weak + w (D_main - D_weak), with the weak model of another kind; a null-class 'weak
    model' makes it CFG."""
    path = PATHS["linear"]
    x, cond = _toy_points()
    t = jnp.linspace(0.1, 0.9, N)
    main = _toy
    weak = lambda x_, t_, c_: 0.8 * _toy(x_, t_, c_) + 0.1
    weak_as_eps = lambda x_, t_, c_: predictions.convert(weak(x_, t_, c_), "x0", "eps", x_, t_, path)
    main_model, weak_model = Model(main, path, "x0"), Model(weak_as_eps, path, "eps")
    g = guidance.autoguidance(main_model, weak_model, 2.0)
    assert g.kind == "x0"
    _close(g(x, t, cond), weak(x, t, cond) + 2.0 * (main(x, t, cond) - weak(x, t, cond)), rtol=1e-11, atol=1e-11)
    one = guidance.autoguidance(main_model, weak_model, 1.0)
    _close(one(x, t, cond), main(x, t, cond), rtol=1e-12, atol=1e-12)
    ag = guidance.autoguidance(
        Model(_toy, path, "velocity"), Model(lambda x_, t_, c_: _toy(x_, t_, 2), path, "velocity"), 2.5
    )
    cfg = guidance.classifier_free(Model(_toy, path, "velocity"), 2.5, null_cond=2)
    _close(ag(x, t, cond), cfg(x, t, cond), rtol=1e-14, atol=1e-14)


# -- sampling ----------------------------------------------------------------------------


def _class_moments(gm, c):
    w = jnp.where(gm.labels == c, gm.weights, 0.0)
    w = w / w.sum()
    mean = w @ gm.means
    d = gm.means - mean[None]
    cov = jnp.einsum("k,kij->ij", w, gm.covs) + jnp.einsum("k,ki,kj->ij", w, d, d)
    return mean, cov


SOLVER_NAMES = list(_names.SOLVERS) + ["pf_ode", "reverse_sde"]


def _run(solver_name, model, x_T, cond, key, num_steps=8):
    """Sample with a fixed-step solver by name, the adaptive PF-ODE or the reverse SDE."""
    if solver_name == "pf_ode":
        return samplers.solve_pf_ode(model, x_T, cond=cond).sample
    if solver_name == "reverse_sde":
        return samplers.solve_reverse_sde(model, key, x_T, cond=cond, num_steps=num_steps).sample
    grid = samplers.log_snr_grid(model.path, num_steps)
    return samplers.sample(_names.get_solver(solver_name), model, x_T, grid, cond=cond, key=key)


@pytest.mark.parametrize("solver_name", SOLVER_NAMES)
def test_cfg_runs_through_every_sampler(solver_name):
    """CFG (w = 3, one batched call, interval) through every fixed-step solver, the adaptive
    PF-ODE (diffrax Tsit5) and the reverse SDE, the guided Model passed to jax.jit as an
    argument: finite, and pathwise equal (same x_T, same key) to the same solver on the
    guided model written out by hand."""
    # The toy as a bounded denoiser keeps every solver's trajectory bounded.
    path, kind, n = PATHS["vp_cosine"], "x0", 16
    x_T, cond = _toy_points(n)

    def by_hand(x, t, c):
        d = _toy(x, t, 2) + 3.0 * (_toy(x, t, c) - _toy(x, t, 2))
        return jnp.where((t > 0.1) & (t <= 0.9), d, _toy(x, t, c))

    guided = guidance.classifier_free(Model(_toy, path, kind), 3.0, null_cond=2, interval=(0.1, 0.9))

    # One program for both models; the key is shared, so stochastic solvers draw the same noise.
    @jax.jit
    def both(guided, reference, x_T, key):
        return _run(solver_name, guided, x_T, cond, key), _run(solver_name, reference, x_T, cond, key)

    got, want = both(guided, Model(by_hand, path, kind), x_T, jax.random.PRNGKey(14))
    assert bool(jnp.all(jnp.isfinite(got)))
    _close(got, want, rtol=1e-10, atol=1e-10)


def test_classifier_guided_pf_ode_reproduces_class_distribution():
    """2000 adaptive PF-ODE samples (diffrax Tsit5, rtol = atol = 1e-5) of the unconditional
    oracle guided by the exact noisy classifier with scale 1 match p_0(x | c = 0) in mean
    and covariance (4 standard errors) and component occupancy (4 binomial standard
    errors), and all land in class 0."""
    gm, path, n = mixture_2d(), PATHS["vp_cosine"], 2000
    cond = jnp.zeros((n,), jnp.int32)  # class 0: components 0 (w 0.5) and 1 (w 0.3)
    x_T = path.prior_sample(jax.random.PRNGKey(7), (n, 2), jnp.float64)
    xs = jax.jit(lambda x: samplers.solve_pf_ode(_cg(gm, path, "eps", 1.0), x, cond=cond).sample)(x_T)
    mean, cov = _class_moments(gm, 0)
    se = jnp.sqrt(jnp.diag(cov) / n)
    assert bool(jnp.all(jnp.abs(xs.mean(0) - mean) < 4 * se)), (xs.mean(0), mean, se)
    # Var of the sample variance ~ 2 var^2 / n for a Gaussian; the mixture's is larger
    # (kurtosis), so use the empirical fourth moment.
    d = xs - mean[None]
    var_se = jnp.sqrt(jnp.var(d**2, axis=0) / n)
    assert bool(jnp.all(jnp.abs(jnp.mean(d**2, axis=0) - jnp.diag(cov)) < 4 * var_se)), (jnp.mean(d**2, 0), cov)
    frac = float(jnp.mean(xs[:, 0] > 0.1))  # component 1 sits at x = 1.2, component 0 at -1.0
    p = 0.3 / 0.8
    assert abs(frac - p) < 4 * np.sqrt(p * (1 - p) / n), frac
    post = jax.jit(jax.vmap(lambda xi: gm.class_log_posterior(xi, path.t_min, path)))(xs)
    assert float(jnp.mean(jnp.exp(post[:, 0]))) > 0.995


# -- training pieces -----------------------------------------------------------------------


def test_noisy_classifier_loss_is_minimized_by_the_exact_posterior():
    """With common random numbers, the exact noisy posterior at the loss's t beats the same
    posterior tempered and the posterior of another noise level (by E KL > 0): the loss is
    the cross-entropy of p_t(c | x_t) with x_t ~ p(x_t | x0) at the given t."""
    gm, path, n = mixture_2d(), PATHS["vp_linear"], 1000
    x0, comp = gm.sample(jax.random.PRNGKey(9), n, return_components=True)
    labels = gm.labels[comp]
    t = jnp.full((n,), 0.55)

    @jax.jit
    def mean_losses(key, temps, shifts):
        def one(temp, shift):
            def fn(x, t_):
                return jax.vmap(lambda xi, ti: gm.class_log_posterior(xi, ti + shift, path))(x, t_) / temp

            return jnp.mean(guidance.noisy_classifier_loss(fn, path, key, x0, cond=labels, t=t))

        return jax.vmap(one)(temps, shifts)

    # exact; tempered 0.7 and 1.4; the posterior of t - 0.3 and t + 0.3
    losses = mean_losses(jax.random.PRNGKey(8), jnp.array([1.0, 0.7, 1.4, 1.0, 1.0]), jnp.array([0, 0, 0, -0.3, 0.3]))
    assert float(jnp.min(losses[1:] - losses[0])) > 1e-3, losses
    # Random times: uniform on [t_min, t_max], one per example.
    seen = []
    record = lambda x, t_: seen.append(t_) or jnp.zeros((n, 3))
    loss = guidance.noisy_classifier_loss(record, path, jax.random.PRNGKey(8), x0, cond=labels)
    _close(loss, jnp.full((n,), np.log(3.0)), rtol=1e-12, atol=0)  # uniform logits over 3 classes
    ts = seen[0]
    assert ts.shape == (n,) and float(ts.min()) >= path.t_min and float(ts.max()) <= path.t_max
    assert abs(float(ts.mean()) - 0.5) < 4 * np.sqrt(1 / 12 / n)


@pytest.mark.slow
def test_trained_noisy_classifier_guides_to_its_class():
    """End to end: an MLP classifier of (x_t, log-SNR) trained with noisy_classifier_loss on the
    mixture reaches the Bayes floor (the exact posterior's cross-entropy) within 0.03 nats on
    fresh data, and guiding the unconditional oracle with it (scale 1, DPM-Solver++(2M),
    20 steps) puts > 95% of samples in the requested class."""
    import optax

    gm, path = mixture_2d(), PATHS["vp_cosine"]
    sizes = [3, 64, 64, gm.num_classes]
    keys = jax.random.split(jax.random.PRNGKey(20), len(sizes))
    params = [(jax.random.normal(k, (a, b)) / np.sqrt(a), jnp.zeros(b)) for k, a, b in zip(keys, sizes[:-1], sizes[1:])]

    def logits_fn(params, x, t):
        lam = jnp.broadcast_to(path.log_snr(t), x.shape[:1])
        h = jnp.concatenate([x, lam[:, None] / 10.0], axis=1)
        for w, b in params[:-1]:
            h = jnp.tanh(h @ w + b[None])
        return h @ params[-1][0] + params[-1][1][None]

    tx = optax.adam(3e-3)

    def loss(params, key):
        k0, k1 = jax.random.split(key)
        x0, comp = gm.sample(k0, 512, return_components=True)
        per_example = guidance.noisy_classifier_loss(
            lambda x, t: logits_fn(params, x, t), path, k1, x0, cond=gm.labels[comp]
        )
        return jnp.mean(per_example)

    @jax.jit
    def train(params):
        def step(carry, i):
            params, opt = carry
            g = jax.grad(loss)(params, jax.random.fold_in(jax.random.PRNGKey(21), i))
            upd, opt = tx.update(g, opt, params)
            return (optax.apply_updates(params, upd), opt), None

        return jax.lax.scan(step, (params, tx.init(params)), jnp.arange(1500))[0][0]

    params = train(params)
    x0, comp = gm.sample(jax.random.PRNGKey(22), 4000, return_components=True)
    exact = lambda x, t: jax.vmap(lambda xi, ti: gm.class_log_posterior(xi, ti, path))(x, t)
    ce = jax.jit(
        lambda f_params, use_exact: jnp.mean(
            guidance.noisy_classifier_loss(
                (lambda x, t: exact(x, t)) if use_exact else (lambda x, t: logits_fn(f_params, x, t)),
                path,
                jax.random.PRNGKey(23),
                x0,
                cond=gm.labels[comp],
            )
        ),
        static_argnums=1,
    )
    bayes, trained = float(ce(params, True)), float(ce(params, False))
    assert bayes <= trained < bayes + 0.03, (bayes, trained)

    n = 1000
    cond = jnp.ones((n,), jnp.int32)
    uncond = gm.as_model(path, "eps")
    log_prob = guidance.classifier_log_prob(jax.tree_util.Partial(logits_fn, params))
    guided = guidance.classifier_guidance(Model(lambda x, t, c: uncond(x, t), path, "eps"), log_prob, 1.0)
    x_T = path.prior_sample(jax.random.PRNGKey(24), (n, 2), jnp.float64)
    grid = samplers.log_snr_grid(path, 20)
    xs = jax.jit(lambda g, x: samplers.sample(samplers.DPMSolverPP2M(), g, x, grid, cond=cond))(guided, x_T)
    post = jax.jit(jax.vmap(lambda xi: gm.class_log_posterior(xi, path.t_min, path)))(xs)
    assert float(jnp.mean(jnp.exp(post[:, 1]))) > 0.95


@pytest.mark.slow
def test_digits_cfg_sample_writes_one_row_per_class(tmp_path):
    """experiments: the digits_cfg runlocal config trains with label dropout, and
    experiments.sample's class-row hook writes a grid whose row c holds class c."""
    import importlib

    from experiments import _lib

    config = importlib.import_module("experiments.configs.digits_cfg").get_config("runlocal")
    config.sample_every = 0
    workdir = str(tmp_path / "cfg")
    _lib.train_and_evaluate(config, workdir)
    x, labels, png, npz, acc = _lib.sample_class_rows(workdir, weight=2.0, per_class=3, solver="euler", num_steps=3)
    assert x.shape == (30, 8, 8, 1) and bool(np.all(np.isfinite(x)))
    np.testing.assert_array_equal(labels, np.repeat(np.arange(10), 3))
    saved = np.load(npz)
    np.testing.assert_array_equal(saved["labels"], labels)
    assert float(saved["guidance_weight"]) == 2.0 and 0.0 <= acc <= 1.0
    from PIL import Image

    h, w = np.asarray(Image.open(png)).shape[:2]
    assert (h, w) == ((10 * 9 + 1) * 16, (3 * 9 + 1) * 16)  # 10 rows x 3 columns of 8x8 tiles, 1-px pad, x16


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


def test_with_label_dropout_feeds_dropped_labels_to_the_loss():
    seen = []

    def loss(model, key, x0, *, cond=None, option="a"):
        seen.append((model, key, cond, option))
        return jnp.zeros(x0.shape[:1])

    wrapped = guidance.with_label_dropout(loss, 0.5, 10)
    labels = jnp.arange(4000, dtype=jnp.int32) % 10
    out = wrapped("the model", jax.random.PRNGKey(0), jnp.zeros((4000, 2)), cond=labels, option="b")
    assert out.shape == (4000,)
    model, key, cond, option = seen[-1]
    assert model == "the model" and option == "b"
    assert not bool(jnp.all(key == jax.random.PRNGKey(0)))  # the loss gets a fresh key
    dropped = cond == 10
    np.testing.assert_array_equal(cond[~dropped], labels[~dropped])
    assert abs(float(dropped.mean()) - 0.5) < 4 * np.sqrt(0.25 / 4000)
    with pytest.raises(ValueError, match="cond"):
        wrapped(None, jax.random.PRNGKey(0), jnp.zeros((4, 2)), cond=None)


def test_with_label_dropout_of_a_library_loss():
    """The composition the experiments layer builds from a config (it replaces the former
    `label_dropout_loss`): jdiff.losses.cfm_loss on labels dropped with the split-off key."""
    from jdiff import losses

    key = jax.random.PRNGKey(1)
    model = Model(_toy, PATHS["linear"], "x0")
    x0, cond = _toy_points()
    got = guidance.with_label_dropout(losses.cfm_loss, 0.5, 2)(model, key, x0, cond=cond)
    k_drop, k_loss = jax.random.split(key)
    want = losses.cfm_loss(model, k_loss, x0, cond=guidance.drop_labels(k_drop, cond, 0.5, 2))
    assert got.shape == (N,)
    _close(got, want, rtol=1e-14, atol=0)


# -- compilation and errors ----------------------------------------------------------------


def test_new_weight_does_not_recompile():
    """A traced weight inside a jitted function, and a guided Model passed to jax.jit as an
    argument: a new weight, interval, rescale or t reuses the compiled program."""
    path, kind = PATHS["vp_linear"], "x0"
    toy = Model(_toy, path, kind)
    x, cond = _toy_points()

    @jax.jit
    def f(w, t):
        return guidance.classifier_free(toy, w, null_cond=2, interval=(0.2, 0.8), rescale=0.5)(x, t, cond)

    @jax.jit
    def g(guided, t):
        return guided(x, t, cond)

    def guided(w, interval, rescale):
        return guidance.classifier_free(toy, w, null_cond=2, interval=interval, rescale=rescale)

    y2, z2 = f(2.0, 0.5), g(guided(2.0, (0.2, 0.8), 0.5), 0.5)
    _close(z2, y2, rtol=1e-14, atol=1e-14)
    with count_compiles() as compiles:
        y3, z3 = f(3.0, 0.4), g(guided(3.0, (0.1, 0.7), 0.3), 0.4)
    assert compiles() == 0
    assert bool(jnp.all(jnp.isfinite(y3))) and float(jnp.max(jnp.abs(y3 - y2))) > 0
    _close(z3, guided(3.0, (0.1, 0.7), 0.3)(x, 0.4, cond), rtol=1e-14, atol=1e-14)


def test_float32_ends_are_finite():
    """Guidance in the model's own space adds no conversion: finite float32 at t_min and t_max
    of every path (a -> 0 and s -> 0 ends included), with rescale and an interval."""
    x, cond = _toy_points(8, jnp.float32)

    @jax.jit
    def outs(x):
        res = {}
        for name, path in PATHS.items():
            for kind in KINDS:
                g = guidance.classifier_free(
                    Model(_toy, path, kind), 3.0, null_cond=2, rescale=0.7, interval=(0.0, 1.0)
                )
                res[name, kind] = jnp.stack([g(x, jnp.float32(t), cond) for t in (path.t_min, path.t_max)])
        return res

    for name_kind, out in outs(x).items():
        assert out.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(out))), name_kind


def test_errors_name_the_argument():
    path = PATHS["linear"]
    fn = lambda x, t, c: x
    model = Model(fn, path, "eps")
    log_prob = lambda x, t, c: -jnp.sum(x**2, axis=1)
    # An unbound network where a jdiff.Model is expected.
    with pytest.raises(TypeError, match="`model` must be a jdiff.Model"):
        guidance.classifier_free(fn, 2.0, null_cond=0)
    with pytest.raises(TypeError, match="`model` must be a jdiff.Model"):
        guidance.autoguidance(fn, model, 2.0)
    with pytest.raises(TypeError, match="`weak_model` must be a jdiff.Model"):
        guidance.autoguidance(model, fn, 2.0)
    with pytest.raises(TypeError, match="`model` must be a jdiff.Model"):
        guidance.classifier_guidance(fn, log_prob, 1.0)
    with pytest.raises(TypeError, match="weak_model.*Linear"):
        guidance.autoguidance(model, Model(fn, PATHS["vp_linear"], "eps"), 2.0)
    with pytest.raises(TypeError, match="log_prob_fn"):
        guidance.classifier_guidance(model, 1.0, 1.0)
    with pytest.raises(TypeError, match="logits_fn"):
        guidance.classifier_log_prob(None)
    with pytest.raises(TypeError, match="loss"):
        guidance.with_label_dropout("cfm_loss", 0.1, 10)
    with pytest.raises(ValueError, match="`p`"):
        guidance.with_label_dropout(lambda *a, **k: None, 1.5, 10)
    with pytest.raises(ValueError, match="space"):
        guidance.classifier_free(model, 2.0, null_cond=0, space="logits")
    with pytest.raises(ValueError, match="interval"):
        guidance.classifier_free(model, 2.0, null_cond=0, interval=0.5)
    with pytest.raises(ValueError, match="interval"):
        guidance.autoguidance(model, model, 2.0, interval=(0.6, 0.3))
    with pytest.raises(ValueError, match="cond"):
        guidance.classifier_free(model, 2.0, null_cond=0)(jnp.ones((2, 2)), 0.5, None)
    with pytest.raises(ValueError, match="cond"):
        guidance.noisy_classifier_loss(lambda x, t: x, path, jax.random.PRNGKey(0), jnp.ones((2, 2)), cond=None)
