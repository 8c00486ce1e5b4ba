"""Shortcut model (Frans et al. 2025) on the 2-D two-moons set: one- to few-step generation.

python -m experiments.train --config=experiments/configs/toy_shortcut.py --workdir=runs/toy_shortcut
python -m experiments.train --config=experiments/configs/toy_shortcut.py:runlocal --workdir=/tmp/toy_shortcut

A two-time FlowMapMLP u(x, t, s) (average velocity over [s, t]) trained with
jdiff.flowmaps.shortcut_loss: 3/4 flow matching, 1/4 "two d-steps = one 2d-step". Sampled
in config.flowmap.num_steps steps (--config.flowmap.num_steps=1 for one step).
arg: "runlocal" shrinks the run to a few seconds.
"""

import ml_collections

from experiments.configs import common


def flowmap_section(param="average_velocity", num_steps=2, gamma=0.0):
    f = ml_collections.ConfigDict()
    f.param = param  # "average_velocity" | "ddim_denoiser"
    f.sigma_data = 0.5
    f.time_input = "t"  # one-time networks: "t" or "edm" (c_noise = -lambda / 8)
    f.num_steps = num_steps
    f.gamma = gamma  # re-noising in flowmaps.sample (1: consistency multistep)
    f.teacher_workdir = ""
    f.teacher_config = ""
    f.teacher_solver = "heun"
    f.init_from_teacher = False
    f.target = "online"  # consistency losses' target f^-: "online" (stop_gradient) | "ema" (the EMA weights)
    return f


def get_config(arg=None):
    c = common.base_config()
    c.data.name = "moons"
    c.data.kwargs.n = 20_000
    c.data.shape = (2,)
    c.model.name = "flowmap_mlp"  # jdiff.models.FlowMapMLP
    c.model.kwargs.in_features = 2
    c.model.kwargs.hidden = 128
    c.model.kwargs.depth = 3
    c.path.name = "linear"
    c.loss.name = "flowmaps.shortcut_loss"
    c.loss.kwargs.max_steps = 128  # smallest step 1/128 (the paper's M)
    c.loss.kwargs.consistency_fraction = 0.25
    c.flowmap = flowmap_section(num_steps=2)
    c.batch_size = 256
    c.total_steps = 4000
    c.optimizer.learning_rate = 2e-3
    c.sample.num_samples = 4096
    c.sample_every = 1000
    if arg == "runlocal":
        common.runlocal(c)
        c.model.kwargs.hidden = 32
        c.sample.num_samples = 256
    return c
