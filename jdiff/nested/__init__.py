"""Nested multi-resolution diffusion (Gu et al. 2023, "Matryoshka Diffusion Models").

One diffusion over a pyramid of resolutions of the same image, e.g. 28x28, 14x14 and 7x7 MNIST:
level l is y_l = c_l avg_pool(x, f_l), noised with its own noise at the shared time t on one
jdiff path, with its log-SNR shifted by delta_l = 2 log c_l (`Pyramid`; MDM's resolution-
dependent schedule shift). A nested network (`jdiff.models.NestedUNet`) sees every level and
predicts every level; the loss sums the per-level denoising losses with weights
(`nested_loss`, optionally `progressive_weights` to start with the coarse levels), and every
jdiff fixed-step solver samples all levels jointly: the state is the tuple of levels
(`jdiff.samplers.sample` ravels a pytree state per example).

    pyramid = nested.Pyramid((1, 2, 4))                        # 28, 14, 7; SNR / 4, / 2, / 1
    model = jdiff.Model(models.NestedUNet(28, 1, num_levels=3, rngs=rngs), jdiff.VPCosine(), "eps")
    loss = nested.nested_loss(model, key, x0, pyramid=pyramid, weights=(1.0, 1.0, 1.0))   # (B,)
    x_T = pyramid.prior_sample(model.path, key, (28, 28, 1), 16)   # tuple of levels at t_max
    levels = samplers.sample(samplers.DPMSolverPP2M(), model, x_T, samplers.log_snr_grid(model.path, 25))
    images = pyramid.images(levels)                           # images[0]: the 28x28 samples

`pyramid_mixture` and `exact_model` give the exact joint model of the levels of a Gaussian
mixture (a linear pyramid of a mixture is again one), the oracle the tests check against.
"""

from jdiff.nested._loss import nested_loss as nested_loss
from jdiff.nested._loss import progressive_weights as progressive_weights
from jdiff.nested._oracle import exact_model as exact_model
from jdiff.nested._oracle import pyramid_mixture as pyramid_mixture
from jdiff.nested._pyramid import Pyramid as Pyramid
from jdiff.nested._pyramid import avg_pool as avg_pool
from jdiff.nested._pyramid import resolution_shifts as resolution_shifts
