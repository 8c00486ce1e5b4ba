"""Denoising diffusion GAN (Xiao et al. 2022) on the 8x8 digits: conv pair, T = 4 steps.

python -m experiments.train --config=experiments/configs/digits_ddgan.py --workdir=runs/digits_ddgan
python -m experiments.train --config=experiments/configs/digits_ddgan.py --config.gan.num_steps=2 --workdir=runs/digits_ddgan2
python -m experiments.train --config=experiments/configs/digits_ddgan.py:runlocal --workdir=/tmp/digits_ddgan

A jdiff.models.DDGANConv pair: a small U-Net generator whose latent z modulates every GroupNorm
(AdaGN, as Xiao et al.'s NCSN++ generator; tanh output in [-1, 1]) and a conv discriminator on
[x_prev, x_t] with the time embedding in every block. Their process and optimizer: VP path
beta_min = 0.1, beta_max = 20, uniform T-step grid, Adam(0.5, 0.9) per player, no clipping, R1
on real samples (0.05, their default). 10% of the digits are held out (experiments.evaluate).
arg: "runlocal" shrinks the run to a few seconds.
"""

from experiments.configs import common
from experiments.configs.toy_ddgan import gan_section


def get_config(arg=None):
    c = common.base_config()
    c.data.name = "digits"
    c.data.shape = (8, 8, 1)
    c.data.holdout = 0.1
    c.model.name = "ddgan_conv"
    c.model.kwargs.image_size = 8
    c.model.kwargs.channels = 1
    c.model.kwargs.ch = 32
    c.model.kwargs.ch_mult = (1, 2)
    c.model.kwargs.num_res_blocks = 1
    c.model.kwargs.latent_dim = 32
    c.model.kwargs.d_ch = 32
    c.model.kwargs.d_ch_mult = (1, 2, 2)
    c.path.name = "vp"
    c.loss.name = "adversarial.ddgan_loss"
    c.loss.kwargs.r1_gamma = 0.05
    c.gan = gan_section(num_steps=4, discriminator_learning_rate=5e-4)
    c.batch_size = 128
    c.total_steps = 5000
    c.ema_decay = 0.999
    c.optimizer.learning_rate = 5e-4
    c.optimizer.warmup_steps = 0
    c.optimizer.b1 = 0.5
    c.optimizer.b2 = 0.9
    c.optimizer.grad_clip_norm = 0.0
    c.sample.grid = "uniform"
    c.sample.num_samples = 100
    c.sample_every = 1000
    c.checkpoint_every = 500
    if arg == "runlocal":
        common.runlocal(c)
        c.model.kwargs.ch = 8
        c.model.kwargs.ch_mult = (1,)  # one resolution: XLA's CPU conv compiles dominate a smoke run
        c.model.kwargs.d_ch = 8
        c.model.kwargs.d_ch_mult = (1, 2)
        c.model.kwargs.latent_dim = 8
    return c
