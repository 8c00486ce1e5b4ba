"""Training objectives: denoising / score matching, the variational bounds, flow matching, EDM.

Every loss takes the bound model first, then the PRNG key, then the data:

    loss(model, key, x0, *, cond=None, <options>) -> (B,) per-example values

of a batch x0 of shape (B, ...): it draws one time per example (or takes `t=`), noises
x_t = alpha(t) x0 + sigma(t) eps along `model.path`, calls the `jdiff.Model` once with t of
shape (B,), and returns *unreduced* per-example values (the caller takes the mean, as in
optax). What the network predicts is `model.kind`; the error is measured in any target
space through `model.predict`.

    model = jdiff.Model(net, jdiff.VPCosine(), "eps")
    loss = losses.dsm_loss(model, key, x0, weighting=losses.MinSNRWeighting(5.0),
                           time_sampler=losses.stratified_time)

Units. Regression losses (`dsm_loss`, `ddpm_loss`, `cfm_loss`, `edm_loss`) return the
weighted squared error *averaged* over the data dimensions of each example (Ho et al.
2020's `mean_flat`). The bounds (`vlb`, `vlb_terms`, `vdm_loss`, `vdm_terms` and their
per-term functions) return negative log-likelihood bounds in **nats per example**,
*summed* over the data dimensions; bits/dim = nats / (D log 2).

Weightings are small objects defined on the x0-space error (`SNRWeighting`,
`MinSNRWeighting(gamma)`, `LikelihoodWeighting`, `EDMWeighting(sigma_data)`, subclasses of
`AbstractWeighting`); `loss_weight` rescales them exactly to any target space, so that

    eps-MSE             = SNRWeighting x0-MSE                      (DDPM's simple loss)
    v-MSE (VP path)     = (1 + SNR)-weighted x0-MSE
    MinSNRWeighting     = min(SNR, gamma) / SNR on the eps-MSE     (Hang et al. 2023)
    LikelihoodWeighting = g^2 on the score-MSE = -lambda' eps-MSE  (Song et al. 2021)
    EDMWeighting        = (sigma_e^2 + sd^2) / (sigma_e sd)^2 on the x0-MSE, sigma_e = s / a
                          (Karras et al. 2022, lambda(sigma) = 1 / c_out^2)

and `weighting=None` is the unit weight in the target space (plain MSE of the target).
0.5 * D * (t_max - t_min) * dsm_loss(..., target="eps", weighting=LikelihoodWeighting())
with uniform t is the diffusion term of the continuous-time VDM bound (`vdm_terms`), example
by example for the same t and noise.

Time samplers map (key, shape, path, dtype) to times in [path.t_min, path.t_max]:
`uniform_time`, `stratified_time` (antithetic / low-discrepancy, Kingma et al. 2021),
`lognormal_time` (EDM's log-normal noise level) and `logit_normal_time` (Esser et al.
2024). Losses take one as the callable `time_sampler=` (bind options with functools.partial).
"""

from jdiff.losses._bounds import BoundTerms as BoundTerms
from jdiff.losses._bounds import (
    discretized_gaussian_log_likelihood as discretized_gaussian_log_likelihood,
)
from jdiff.losses._bounds import normal_kl as normal_kl
from jdiff.losses._bounds import q_posterior as q_posterior
from jdiff.losses._bounds import vdm_loss as vdm_loss
from jdiff.losses._bounds import vdm_terms as vdm_terms
from jdiff.losses._bounds import vlb as vlb
from jdiff.losses._bounds import vlb_diffusion_term as vlb_diffusion_term
from jdiff.losses._bounds import vlb_prior as vlb_prior
from jdiff.losses._bounds import vlb_reconstruction as vlb_reconstruction
from jdiff.losses._bounds import vlb_terms as vlb_terms
from jdiff.losses._flow_matching import COUPLINGS as COUPLINGS
from jdiff.losses._flow_matching import cfm_loss as cfm_loss
from jdiff.losses._flow_matching import ot_pairing as ot_pairing
from jdiff.losses._regression import ddpm_loss as ddpm_loss
from jdiff.losses._regression import dsm_loss as dsm_loss
from jdiff.losses._regression import edm_loss as edm_loss
from jdiff.losses._time import logit_normal_time as logit_normal_time
from jdiff.losses._time import lognormal_time as lognormal_time
from jdiff.losses._time import stratified_time as stratified_time
from jdiff.losses._time import uniform_time as uniform_time
from jdiff.losses._weighting import AbstractWeighting as AbstractWeighting
from jdiff.losses._weighting import EDMWeighting as EDMWeighting
from jdiff.losses._weighting import LikelihoodWeighting as LikelihoodWeighting
from jdiff.losses._weighting import MinSNRWeighting as MinSNRWeighting
from jdiff.losses._weighting import SNRWeighting as SNRWeighting
from jdiff.losses._weighting import loss_weight as loss_weight
