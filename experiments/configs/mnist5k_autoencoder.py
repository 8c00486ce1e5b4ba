"""A KL autoencoder in the Stable Diffusion VAE layout on MNIST-5k: 28x28x1 images -> 7x7x4 latents.

python -m experiments.train --config=experiments/configs/mnist5k_autoencoder.py --workdir=runs/mnist5k_ae
python -m experiments.train --config=experiments/configs/mnist5k_autoencoder.py:runlocal --workdir=/tmp/mnist5k_ae
python -m experiments.train --config=experiments/configs/mnist5k_autoencoder.py:gan --workdir=runs/mnist5k_ae_gan

Three levels of widths (16, 32, 32) (downsampling factor 4), one ResNet block per level, mid-block
attention at 7x7, 4 latent channels: small enough to train on a CPU (2500 steps of 32 digits). Loss: L1 reconstruction summed over pixels + 1e-6 KL (the
LDM / SD VAE weights), jdiff.latent.autoencoder_loss; every step updates the running latent
normalization (scale = 1 / std of the posterior means), saved with each checkpoint, which the
latent diffusion config (mnist5k_latent.py) reads from this workdir. Samples written during
training are held-out digits (first half of the grid) above their reconstructions.

arg (comma-separated): "runlocal" shrinks the run to a few seconds; "gan" adds a PatchGAN
discriminator with hinge loss and Esser et al.'s adaptive weight from step 1000 (Rombach et al.
2022 start it later, after the reconstructions have converged).
"""

import ml_collections
from ml_collections import config_dict

from experiments.configs import common


def get_config(arg=None):
    args = set((arg or "").split(","))
    c = common.base_config()
    c.data.name = "mnist5k"
    c.data.shape = (28, 28, 1)
    c.data.holdout = 0.2  # 1000 digits never trained on: the reconstruction metrics of docs/latent.md
    c.model.name = "autoencoder_kl"
    c.model.kwargs.block_out_channels = (16, 32, 32)  # 28 -> 14 -> 7
    c.model.kwargs.layers_per_block = 1
    c.model.kwargs.latent_channels = 4
    c.model.kwargs.norm_num_groups = 8
    c.autoencoder = ml_collections.ConfigDict()
    c.autoencoder.l1_weight = 1.0
    c.autoencoder.l2_weight = 0.0
    c.autoencoder.kl_weight = 1e-6
    c.autoencoder.sample_posterior = True
    c.autoencoder.shift = False  # SD 1.x-style: scale only
    c.autoencoder.discriminator = config_dict.placeholder(str)
    c.autoencoder.discriminator_kwargs = ml_collections.ConfigDict()
    c.autoencoder.disc_weight = 0.5
    c.autoencoder.disc_start = 0
    c.batch_size = 32
    c.total_steps = 2500
    c.ema_decay = 0.999
    c.optimizer.learning_rate = 1e-3
    c.optimizer.warmup_steps = 200
    c.optimizer.schedule = "cosine"
    c.optimizer.grad_clip_norm = 1.0
    c.sample.num_samples = 32  # 16 held-out digits and their reconstructions
    c.sample_every = 500
    c.checkpoint_every = 500
    if "gan" in args:
        c.autoencoder.discriminator = "patch"
        c.autoencoder.discriminator_kwargs.ch = 16
        c.autoencoder.discriminator_kwargs.num_layers = 2  # 28 -> 14 -> 7 -> 6 -> 5: 5x5 patches
        c.autoencoder.disc_start = 1000
    if "runlocal" in args:
        common.runlocal(c, steps=4)
        c.model.kwargs.block_out_channels = (4, 8, 8)
        c.model.kwargs.norm_num_groups = 4
        c.batch_size = 8
        c.sample.num_samples = 8
        if "gan" in args:
            c.autoencoder.discriminator_kwargs.ch = 4
            c.autoencoder.disc_start = 2
    return c
