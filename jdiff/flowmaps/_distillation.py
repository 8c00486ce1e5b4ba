"""Teacher steps for distillation, and progressive distillation (Salimans & Ho 2022)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jdiff import samplers
from jdiff._model import Model, check_model
from jdiff._shared import loss_batch, mean_data, noised
from jdiff.flowmaps._flowmap import per_example
from jdiff.paths import AbstractPath, expand_to


def solver_step(solver: samplers.AbstractSolver, model: Model):
    """A teacher's one-step ODE map step(x, t, s, cond=None) -> x_s from a jdiff.samplers solver.

    Each example takes one step of `solver` (e.g. `DDIM()`, `Euler()`, `Heun()`) from its own
    t to its own s on the PF-ODE of the `jdiff.Model` `model`, through `jdiff.samplers.sample`
    on the 2-point grid [t, s]. The result is what `consistency_distillation_loss` and
    `progressive_distillation_loss` take as `teacher_step`.
    """
    if not isinstance(solver, samplers.AbstractSolver):
        raise TypeError(f"`solver` must be a jdiff.samplers solver (an AbstractSolver); got {type(solver).__name__}")
    check_model(model)
    if solver.stochastic:
        raise ValueError(f"`solver` must be deterministic for distillation; {type(solver).__name__} draws noise")

    def one(x, t, s, cond):
        cond = jax.tree_util.tree_map(lambda c: c[None], cond)
        return samplers.sample(solver, model, x[None], jnp.stack([t, s]), cond=cond)[0]

    def step(x, t, s, cond=None):
        t, s = per_example(t, x), per_example(s, x)
        return jax.vmap(one)(x, t, s, cond)

    return step


def ddim_target(path: AbstractPath, z_t, t, z_s, s):
    """The denoiser x~ whose DDIM step from (z_t, t) lands on z_s at s (Salimans & Ho 2022, Alg. 2).

    Solves z_s = alpha_s x~ + sigma_s (z_t - alpha_t x~) / sigma_t for x~:
    x~ = (z_s - (sigma_s / sigma_t) z_t) / (alpha_s - (sigma_s / sigma_t) alpha_t).
    The denominator is (alpha_s sigma_t - sigma_s alpha_t) / sigma_t > 0 for s < t.
    """
    ratio = expand_to(path.sigma(s) / path.sigma(t), z_t, "t")
    return (z_s - ratio * z_t) / (expand_to(path.alpha(s), z_t, "t") - ratio * expand_to(path.alpha(t), z_t, "t"))


def progressive_distillation_loss(
    student: Model,
    key,
    x0,
    *,
    cond=None,
    teacher_step: Callable,
    num_student_steps,
):
    """Progressive distillation (Salimans & Ho 2022, Algorithm 2), per example.

    The student, a `jdiff.Model` sampled with DDIM on the uniform grid of `num_student_steps`
    steps over [t_min, t_max] of its path, learns to match two teacher steps (each a DDIM step
    of the teacher, which runs 2 N steps) with one: at t = t_i,
    z'' = teacher_step(teacher_step(z_t, t, t - h/2), t - h/2, t - h), h = span / N, target
    x~ = `ddim_target`(z_t, t, z'', t - h), loss max(SNR(t), 1) ||x0_hat - x~||^2 (the
    "truncated SNR" weighting of their Eq. 10) with x0_hat = `student.x0`, averaged over the
    example's values. Repeat with N halved and the student as the new teacher.

    Args:
        student: the student `jdiff.Model` (initialised from the teacher), of any kind.
        key: PRNG key (the grid index and the noise).
        x0: (N, ...) data batch.
        cond: conditioning pytree or None (passed to the teacher step and the student).
        teacher_step: (x, t, s, cond) -> x_s, per-example times (see `solver_step`).
        num_student_steps: N (may be traced).
    """
    check_model(student, "student")
    key, x0 = loss_batch(student, key, x0)
    path = student.path
    dtype = jnp.result_type(x0)
    n = jnp.shape(x0)[0]
    k_i, k_eps = jax.random.split(key)
    h = (path.t_max - path.t_min) / num_student_steps
    i = jax.random.randint(k_i, (n,), 1, num_student_steps + 1)
    t = (path.t_min + i * h).astype(dtype)
    t_mid, t_next = t - 0.5 * h, t - h
    eps = jax.random.normal(k_eps, jnp.shape(x0), dtype)
    z = noised(path, x0, eps, t)
    z_next = teacher_step(teacher_step(z, t, t_mid, cond), t_mid, t_next, cond)
    target = jax.lax.stop_gradient(ddim_target(path, z, t, z_next, t_next))
    x0_hat = student.x0(z, t, cond)
    weight = jnp.maximum(jnp.exp(path.log_snr(t)), 1.0)
    return weight * mean_data(jnp.square(x0_hat - target))
