"""Improved consistency training (iCT; Song & Dhariwal 2023) on the 2-D two-moons set, no teacher.

python -m experiments.train --config=experiments/configs/toy_ct.py --workdir=runs/toy_ct
python -m experiments.train --config=experiments/configs/toy_ct.py:runlocal --workdir=/tmp/toy_ct

A two-time FlowMapMLP as a consistency model: the DDIM jump to t_min with EDM's
preconditioned denoiser (jdiff.flowmaps.DDIMDenoiser; sigma_data 1.4 is the moons' RMS std),
on the VE path over EDM's range [0.002, 80]. Loss: jdiff.flowmaps.consistency_training_loss
with iCT's settings (curriculum N(k) from 11 to 1281 levels over config.total_steps, which the
train step's index drives; lognormal level choice; pseudo-Huber distance) and iCT's target:
the online network under stop_gradient (config.flowmap.target = "online"; "ema" uses the EMA
weights instead). Sampling: multistep consistency sampling (gamma = 1) in
config.flowmap.num_steps steps.
arg: "runlocal" shrinks the run to a few seconds.
"""

from experiments.configs import common
from experiments.configs.toy_shortcut import flowmap_section


def get_config(arg=None):
    c = common.base_config()
    c.data.name = "moons"
    c.data.kwargs.n = 20_000
    c.data.shape = (2,)
    c.model.name = "flowmap_mlp"
    c.model.kwargs.in_features = 2
    c.model.kwargs.hidden = 128
    c.model.kwargs.depth = 3
    c.path.name = "ve"  # sigma(t) = 0.002^(1-t) 80^t: iCT's noise range
    c.loss.name = "flowmaps.consistency_training_loss"
    c.loss.kwargs.s0 = 10  # curriculum N(k) = min(s0 2^floor(k / K'), s1) + 1
    c.loss.kwargs.s1 = 1280
    c.flowmap = flowmap_section(param="ddim_denoiser", num_steps=2, gamma=1.0)
    c.flowmap.sigma_data = 1.4
    c.flowmap.target = "online"  # iCT: EMA decay 0 for the target
    c.batch_size = 256
    c.total_steps = 8000
    c.optimizer.learning_rate = 1e-3
    c.sample.num_samples = 4096
    c.sample_every = 2000
    if arg == "runlocal":
        common.runlocal(c)
        c.model.kwargs.hidden = 32
        c.sample.num_samples = 256
    return c
