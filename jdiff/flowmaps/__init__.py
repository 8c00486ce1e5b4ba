"""Flow-map models: consistency models, MeanFlow, shortcut models, progressive distillation.

A flow map jumps along the probability-flow ODE of a path: f(x_t, t, s) = x_s for s < t
(t = 0 data, t = 1 noise). `FlowMap(net, path, param)` binds a raw two-time network
`net(x, t, s, cond)` (e.g. `jdiff.models.FlowMapMLP`) to its path and a parameterization with
the boundary condition f(x, t, t) = x built in through skip/out scalings,

    f(x, t, s) = c_skip(t, s) x + c_out(t, s) net(c_in(t) x, t, s, cond),

with c_skip(t, t) = 1 and c_out(t, t) = 0 exactly (in floating point, not only in the
limit). Two parameterizations (`AbstractFlowMapParam`):

    AverageVelocity()   f = x + (s - t) net: net is the average velocity u over [s, t]
                        (MeanFlow's u(z, r, t) with r = s; shortcut models' v(x, t, d), d = t - s).
    DDIMDenoiser(sd)    f = DDIM step from t to s with the denoiser D = EDM-preconditioned net
                        (CTM's jump parameterization; on the VE path with s = t_min its c_out is
                        exactly the consistency-model c_out of Song et al. 2023).

    flow = flowmaps.FlowMap(models.FlowMapMLP(2, rngs=nnx.Rngs(0)), jdiff.Linear())
    loss = flowmaps.shortcut_loss(flow, key, x0)                  # (B,) per example
    x = flowmaps.sample(flow, x_T, samplers.uniform_grid(flow.path, 2))

Losses take the flow map (or, for progressive distillation, the student `jdiff.Model`) first,
then the key, then the data, options keyword-only, and return unreduced per-example values.
Units: the consistency losses use the pseudo-Huber distance of the whole example (a norm, as
in the papers), MeanFlow the squared L2 norm summed over the example (its adaptive weight's
c = 1e-3 is calibrated for that), shortcut and progressive distillation the squared error
averaged over the example's values, as jdiff.losses' regression losses (Ho et al.'s `mean_flat`):

    consistency_training_loss      improved consistency training (Song & Dhariwal 2023)
    consistency_distillation_loss  consistency distillation from any teacher step (Song et al. 2023)
    meanflow_loss                  the MeanFlow identity with a jax.jvp time derivative (Geng et al. 2025)
    shortcut_loss                  flow matching + two d-steps = one 2d-step (Frans et al. 2025)
    progressive_distillation_loss  one student DDIM step = two teacher steps (Salimans & Ho 2022)

`sample` runs any flow map on a time grid in one `lax.scan`, deterministically or with
re-noising (gamma = 1 is the multistep consistency sampler; 0 < gamma < 1 is CTM's
gamma-sampling). `solver_step(solver, model)` turns a jdiff.samplers solver and a teacher
`jdiff.Model` into the teacher step of the distillation losses.
"""

from jdiff.flowmaps._consistency import (
    consistency_distillation_loss as consistency_distillation_loss,
)
from jdiff.flowmaps._consistency import (
    consistency_training_loss as consistency_training_loss,
)
from jdiff.flowmaps._consistency import ict_noise_level_probs as ict_noise_level_probs
from jdiff.flowmaps._consistency import ict_num_scales as ict_num_scales
from jdiff.flowmaps._consistency import karras_sigmas as karras_sigmas
from jdiff.flowmaps._consistency import pseudo_huber as pseudo_huber
from jdiff.flowmaps._distillation import ddim_target as ddim_target
from jdiff.flowmaps._distillation import (
    progressive_distillation_loss as progressive_distillation_loss,
)
from jdiff.flowmaps._distillation import solver_step as solver_step
from jdiff.flowmaps._flowmap import AbstractFlowMapParam as AbstractFlowMapParam
from jdiff.flowmaps._flowmap import AverageVelocity as AverageVelocity
from jdiff.flowmaps._flowmap import DDIMDenoiser as DDIMDenoiser
from jdiff.flowmaps._flowmap import FlowMap as FlowMap
from jdiff.flowmaps._flowmap import consistency_function as consistency_function
from jdiff.flowmaps._meanflow import meanflow_loss as meanflow_loss
from jdiff.flowmaps._meanflow import meanflow_target as meanflow_target
from jdiff.flowmaps._sample import sample as sample
from jdiff.flowmaps._shortcut import shortcut_loss as shortcut_loss
