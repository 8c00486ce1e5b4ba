"""Denoising diffusion GAN (Xiao et al. 2022) on the 2-D Gaussian mixture: T = 4 adversarial steps.

python -m experiments.train --config=experiments/configs/toy_ddgan.py --workdir=runs/toy_ddgan
python -m experiments.train --config=experiments/configs/toy_ddgan.py:runlocal --workdir=/tmp/toy_ddgan
python -m experiments.sample --workdir=runs/toy_ddgan     # 4 generator evaluations per sample

A jdiff.models.DDGANMLP pair (generator G(x_t, z, t) -> x0 with its latent z through adaptive
LayerNorm; time-conditional discriminator D(x_prev, x_t, t)) on jdiff.data's 4-component
Gaussian mixture, whose exact law the benchmark compares against (docs/ddgan.md). Xiao et al.'s
process: the VP path with beta_min = 0.1, beta_max = 20 ("vp") on T = 4 uniform steps; Adam
with b1 = 0.5, b2 = 0.9 for both players (two optimizers, jdiff.adversarial.two_player_optimizer),
no gradient clipping, R1 = 0.05 on real samples (their default). Rates are larger than their
CIFAR-10 1.6e-4 / 1.25e-4: a 2-D MLP trains in thousands of steps, not hundreds of epochs.
arg: "runlocal" shrinks the run to a few seconds.
"""

import ml_collections

from experiments.configs import common


def gan_section(num_steps=4, discriminator_learning_rate=1e-3):
    g = ml_collections.ConfigDict()
    g.num_steps = num_steps  # T: the DDGAN's steps on the sample.grid of the path (NFE = T)
    g.discriminator_learning_rate = discriminator_learning_rate  # the generator's: optimizer.learning_rate
    return g


def get_config(arg=None):
    c = common.base_config()
    c.data.name = "gaussian_mixture"  # jdiff.data.toy.default_mixture(): the exact oracle
    c.data.kwargs.n = 20_000
    c.data.shape = (2,)
    c.model.name = "ddgan_mlp"
    c.model.kwargs.in_features = 2
    c.model.kwargs.latent_dim = 16
    c.model.kwargs.hidden = 128
    c.model.kwargs.depth = 3
    c.path.name = "vp"  # VPLinear(0.1, 20): Xiao et al.'s
    c.loss.name = "adversarial.ddgan_loss"
    c.loss.kwargs.r1_gamma = 0.05
    c.gan = gan_section(num_steps=4, discriminator_learning_rate=1e-3)
    c.batch_size = 256
    c.total_steps = 6000
    c.ema_decay = 0.999
    c.optimizer.learning_rate = 1e-3
    c.optimizer.warmup_steps = 0
    c.optimizer.b1 = 0.5
    c.optimizer.b2 = 0.9
    c.optimizer.grad_clip_norm = 0.0  # none, as theirs
    c.sample.grid = "uniform"  # ddgan_grid: equal steps in t
    c.sample.num_samples = 4096
    c.sample_every = 2000
    if arg == "runlocal":
        common.runlocal(c)
        c.model.kwargs.hidden = 32
        c.model.kwargs.depth = 1
        c.sample.num_samples = 256
    return c
