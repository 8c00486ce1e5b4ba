"""Nested multi-resolution diffusion (Gu et al. 2023) on MNIST-5k: 28x28, 14x14 and 7x7 jointly.

python -m experiments.train --config=experiments/configs/mnist5k_nested.py --workdir=runs/mnist5k_nested
python -m experiments.train --config=experiments/configs/mnist5k_nested.py:runlocal --workdir=/tmp/mnist5k_nested
python -m experiments.sample --workdir=runs/mnist5k_nested --solver=dpmpp_2m --num_steps=25

The mnist5k config (class-conditional v-prediction U-Net, cosine VP path) as a nested model: a
jdiff.models.NestedUNet with the U-Net's widths per level (64, 128, 128 at 28, 14, 7) predicts
all three levels of jdiff.nested.Pyramid((1, 2, 4)); the 28x28 level's log-SNR is shifted by
-log 4 and the 14x14 one's by -log 2 (MDM's SNR / r^p with p = 1, their 256x256 config), the
levels' losses are summed with equal weights (MDM's default; --config.nested.weights=(16,4,1)
is their 1024x1024 setting) and every level is sampled jointly by the config's solver; the
samples are the 28x28 level. Progressive training (MDM Sec. 3.3):
--config.nested.start_steps=(20000,10000,0) starts with 7x7 alone and adds 14x14, then 28x28.
arg: "runlocal" shrinks the run to a few seconds.
"""

import ml_collections

from experiments.configs import common, mnist5k


def nested_section(factors=(1, 2, 4), shift_power=1.0, weights=(1.0, 1.0, 1.0), start_steps=(0, 0, 0)):
    n = ml_collections.ConfigDict()
    n.factors = factors  # pooling factor of each level, finest first
    n.shift_power = shift_power  # log-SNR shift -p log(f_max / f) per level
    n.weights = weights  # per-level loss weights, finest first
    n.start_steps = start_steps  # progressive training: the step each level joins the loss
    return n


def get_config(arg=None):
    c = mnist5k.get_config(None)
    c.model.name = "nested_unet"
    c.model.kwargs.num_levels = 3  # ch_mult (1, 2, 2): one multiplier per level; attention at 7x7
    c.loss.name = "nested.nested_loss"  # loss.weighting "none": plain v-MSE per level, as mnist5k
    c.nested = nested_section()
    if arg == "runlocal":
        common.runlocal(c)
        c.model.kwargs.ch = 8
        c.model.kwargs.num_res_blocks = 1
        c.model.kwargs.attn_resolutions = ()
    return c
