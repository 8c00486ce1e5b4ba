"""The bound DDGAN generator, its T-step sampler and the exact posterior step.

Xiao et al. (2022), "Tackling the Generative Learning Trilemma with Denoising Diffusion GANs":
the reverse process takes T large steps (T = 2 to 8; their CIFAR-10 model uses T = 4) along a
time grid t_T > ... > t_1 > t_0 of a Gaussian path. Step k draws

    x0_hat = G(x_{t_k}, z, t_k),  z ~ N(0, I)       (the generator predicts the data)
    x_{t_{k-1}} ~ q(x_{t_{k-1}} | x_{t_k}, x0 = x0_hat)   (the exact Gaussian posterior)

and the last step (k = 1) returns x0_hat itself: the grid's last time is the data level, as
in their sampler, whose posterior at t = 0 has mean x0_hat and no noise. Because z makes
x0_hat a random variable, the step can represent the multimodal true denoising distribution
p(x_{t_{k-1}} | x_{t_k}), which a Gaussian step with the mean E[x0 | x_t] cannot when the
step is large: with a G that draws x0 from the exact p(x0 | x_t), the T-step chain samples the
data distribution exactly for any T (tested on the Gaussian-mixture oracle).
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from jdiff._model import _as_pytree_net
from jdiff.losses import q_posterior
from jdiff.paths import AbstractPath, expand_to
from jdiff.precision import as_state
from jdiff.samplers import check_grid, uniform_grid

__all__ = ["DDGAN", "DEFAULT_NUM_STEPS", "check_ddgan", "ddgan_grid", "posterior_sample", "sample"]

# Xiao et al. (2022) train with T = 4 steps on CIFAR-10 (T = 2 on CelebA-HQ 256, 4 on LSUN).
DEFAULT_NUM_STEPS = 4


def ddgan_grid(path: AbstractPath, num_steps: int = DEFAULT_NUM_STEPS):
    """The DDGAN time grid: `num_steps` + 1 equally spaced times from path.t_max to path.t_min.

    Xiao et al. (2022) use t_k = eps + (1 - eps) k / T, eps = 1e-3, on the VP path with
    beta_min = 0.1, beta_max = 20 (jdiff.VPLinear()), and treat t_0 as data; this is
    `jdiff.samplers.uniform_grid` on the path's range, whose last time likewise is the data
    level of a DDGAN. Any decreasing grid inside [t_min, t_max] works (e.g. `log_snr_grid`).
    """
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
        raise ValueError(f"`num_steps` must be a Python int >= 1 (the number of DDGAN steps T); got {num_steps!r}")
    return uniform_grid(path, num_steps)


class DDGAN(eqx.Module):
    """A DDGAN generator bound to its path and its time grid.

    Args:
        generator: `G(x_t, z, t, cond) -> x0_hat`, batched: x_t (B, ...), z (B, latent_dim), t
            (B,) times of the path, cond None or a pytree; returns a prediction of the data
            of x_t's shape. An nnx Module, an equinox Module or any callable.
        path: the `jdiff.paths.AbstractPath` along which the data is noised.
        grid: (T + 1,) strictly decreasing times inside [path.t_min, path.t_max]; grid[0] is
            where sampling starts (x_T ~ the prior) and grid[-1] the data level: the last step
            returns the generator's x0_hat. A traced leaf (a new grid of the same length does
            not recompile). `ddgan_grid(path, T)` is Xiao et al.'s.
        latent_dim: size of the latent z ~ N(0, I) drawn at every step.

    `num_steps` (T) is also the number of generator evaluations of one sample (`nfe`).
    """

    generator: Any
    path: AbstractPath
    grid: jax.Array
    latent_dim: int = eqx.field(static=True)

    def __init__(self, generator, path: AbstractPath, grid, latent_dim: int):
        if not callable(generator):
            raise TypeError(f"`generator` must be a callable G(x_t, z, t, cond) -> x0; got {type(generator).__name__}")
        if not isinstance(path, AbstractPath):
            raise TypeError(
                f"`path` must be a jdiff path (an AbstractPath, e.g. jdiff.VPLinear()); got {type(path).__name__}"
            )
        grid = check_grid(grid)
        if not isinstance(grid, jax.core.Tracer):
            g = np.asarray(grid, np.float64)
            # float32 grids: allow the rounding of t_min / t_max.
            tol = 1e-6 * max(1.0, abs(path.t_max))
            if g[-1] < path.t_min - tol or g[0] > path.t_max + tol:
                raise ValueError(
                    f"`grid` must lie inside the path's range [{path.t_min}, {path.t_max}] (the posterior "
                    f"step is exact there); got [{g[-1]}, {g[0]}]"
                )
        if not isinstance(latent_dim, int) or isinstance(latent_dim, bool) or latent_dim < 1:
            raise ValueError(f"`latent_dim` must be a Python int >= 1 (the size of z); got {latent_dim!r}")
        self.generator = _as_pytree_net(generator)
        self.path = path
        self.grid = grid
        self.latent_dim = latent_dim

    @property
    def num_steps(self) -> int:
        """T, the number of denoising steps (a Python int: the grid's length is static)."""
        return self.grid.shape[0] - 1

    @property
    def nfe(self) -> int:
        """Generator evaluations per sample: one per step, T."""
        return self.num_steps

    def latent(self, key, batch: int, dtype=jnp.float32):
        """z ~ N(0, I) of shape (batch, latent_dim)."""
        return jax.random.normal(key, (batch, self.latent_dim), dtype)

    def x0(self, x_t, z, t, cond=None):
        """The generator's data prediction x0_hat = G(x_t, z, t, cond), in x_t's dtype."""
        b = jnp.shape(x_t)[0]
        t = jnp.broadcast_to(jnp.asarray(t, jnp.result_type(x_t)), (b,))
        pred = self.generator(x_t, z, t, cond)
        if jnp.shape(pred) != jnp.shape(x_t):
            raise ValueError(
                f"the DDGAN generator returned shape {jnp.shape(pred)} for `x_t` of shape "
                f"{jnp.shape(x_t)}; it must predict x0 of the shape of x_t"
            )
        return jnp.asarray(pred, jnp.result_type(x_t))


def check_ddgan(ddgan, name: str = "ddgan") -> DDGAN:
    """`ddgan` must be a bound `DDGAN`; the error names the argument."""
    if not isinstance(ddgan, DDGAN):
        raise TypeError(
            f"`{name}` must be a jdiff.adversarial.DDGAN (generator, path and time grid bound "
            f"together), e.g. DDGAN(G, path, ddgan_grid(path, 4), latent_dim); got {type(ddgan).__name__}"
        )
    return ddgan


def posterior_sample(path: AbstractPath, key, x0, x_t, s, t):
    """A draw of x_s ~ q(x_s | x_t, x0) for s < t (scalars or one time per example).

    q is the exact Gaussian posterior of the path (`jdiff.losses.q_posterior`): mean
    a_{t|s} s_s^2 / s_t^2 x_t + a_s s_{t|s}^2 / s_t^2 x0, variance s_{t|s}^2 s_s^2 / s_t^2.
    """
    mean, logvar = q_posterior(path, x0, x_t, s, t)
    noise = jax.random.normal(key, jnp.shape(x_t), jnp.result_type(x_t))
    return (mean + jnp.exp(0.5 * logvar) * noise).astype(jnp.result_type(x_t))


def _step(ddgan: DDGAN, key, x, t, s, last, cond):
    """One DDGAN step from t to s: x_s ~ q(x_s | x, G(x, z, t)), or G's x0_hat when `last`."""
    kz, kn = jax.random.split(key)
    z = ddgan.latent(kz, jnp.shape(x)[0], jnp.result_type(x))
    x0 = ddgan.x0(x, z, t, cond)
    x_s = posterior_sample(ddgan.path, kn, x0, x, s, t)
    return jnp.where(expand_to(last, x), x0, x_s)


def sample(ddgan: DDGAN, key, x_T, *, cond=None, return_trajectory: bool = False):
    """Draw samples with a DDGAN in its T steps (one `lax.scan`; NFE = T = `ddgan.nfe`).

    Args:
        ddgan: the bound `DDGAN` (generator, path, grid).
        key: PRNG key; step i uses `fold_in(key, i)` for its latent z and posterior noise.
        x_T: (B, ...) starting points at ddgan.grid[0], e.g. `ddgan.path.prior_sample(key, shape)`.
        cond: conditioning pytree passed to the generator, or None.
        return_trajectory: also return the states after every step, shape (T + 1, *x_T.shape)
            (x_T first, the samples last).

    Returns:
        The samples (the last step's x0_hat), or (samples, trajectory).
    """
    check_ddgan(ddgan)
    # The state and the clock at least float32 (jdiff.precision): a bfloat16 x_T rounded the grid's
    # t_max = 0.999 to 1.0.
    x_T = as_state(x_T, name="x_T")
    grid = ddgan.grid.astype(x_T.dtype)
    n = ddgan.num_steps

    def body(x, inputs):
        i, t, s = inputs
        x = _step(ddgan, jax.random.fold_in(key, i), x, t, s, i == n - 1, cond)
        return x, (x if return_trajectory else None)

    x, traj = jax.lax.scan(body, x_T, (jnp.arange(n), grid[:-1], grid[1:]))
    if not return_trajectory:
        return x
    return x, jnp.concatenate([x_T[None], traj], axis=0)
