"""Latent diffusion on MNIST-5k: a class-conditional U-Net on the 7x7x4 latents of mnist5k_autoencoder.

python -m experiments.train --config=experiments/configs/mnist5k_autoencoder.py --workdir=runs/mnist5k_ae
python -m experiments.train --config=experiments/configs/mnist5k_latent.py --workdir=runs/mnist5k_latent \
    --config.latent.path=runs/mnist5k_ae
python -m experiments.sample --workdir=runs/mnist5k_latent --solver=dpmpp_2m --num_steps=25
python -m experiments.train --config=experiments/configs/mnist5k_latent.py:runlocal --workdir=/tmp/mnist5k_latent

The training digits (data.holdout = 0.2 of MNIST-5k, the autoencoder's split) are encoded once into
<workdir>/latent_cache with the autoencoder's EMA weights and the latent normalization stored in its
checkpoint; training reads only the cache, and every sample grid is decoded once at the end of the
sampler. The model and path follow mnist5k.py (v-prediction, cosine VP path, DPM-Solver++(2M) on a
log-SNR grid) on the 7x7x4 latents: widths 32, 64 at 7 -> 4, one residual block per level,
attention at 4, batch 64, AdamW 5e-4 after a 200-step warmup, constant (the docs/latent.md run).

arg: "runlocal" trains a few steps on 64 synthetic 28x28 images with a freshly initialised tiny
autoencoder (latent.source = "init"), no trained workdir needed.
"""

import ml_collections

from experiments.configs import common


def get_config(arg=None):
    c = common.base_config()
    c.data.name = "mnist5k"
    c.data.shape = (28, 28, 1)  # the images; the model sees their latents
    c.data.cond = "label"
    c.data.holdout = 0.2  # as mnist5k_autoencoder: the same 1000 held-out digits for evaluation
    c.latent = ml_collections.ConfigDict()
    c.latent.source = "workdir"
    c.latent.path = "runs/mnist5k_ae"
    c.latent.autoencoder_kwargs = ml_collections.ConfigDict()  # for source "init"
    c.latent.posterior = "mode"
    c.latent.cache_dir = ""  # <workdir>/latent_cache
    c.latent.cache_dtype = "float32"
    c.latent.encode_batch_size = 500
    c.model.name = "unet"
    c.model.kwargs.image_size = 7
    c.model.kwargs.channels = 4
    c.model.kwargs.ch = 32
    c.model.kwargs.ch_mult = (1, 2)  # 7 -> 4
    c.model.kwargs.num_res_blocks = 1
    c.model.kwargs.attn_resolutions = (4,)
    c.model.kwargs.dropout = 0.1
    c.model.kwargs.num_classes = 10
    c.model.kwargs.kind = "v"
    c.path.name = "vp_cosine"
    c.loss.name = "dsm_loss"
    c.loss.weighting = "none"
    c.batch_size = 64
    c.total_steps = 4000
    c.optimizer.learning_rate = 5e-4
    c.optimizer.warmup_steps = 200
    c.optimizer.schedule = "constant"
    c.sample.solver = "dpmpp_2m"
    c.sample.grid = "log_snr"
    c.sample.num_steps = 25
    c.sample.num_samples = 100
    c.sample_every = 1000
    c.checkpoint_every = 1000
    if arg == "runlocal":
        common.runlocal(c, steps=4)
        c.data.name = "synthetic"
        c.data.kwargs.n = 64
        c.data.kwargs.shape = (28, 28, 1)
        c.data.holdout = 0.0
        c.latent.source = "init"
        c.latent.path = ""
        c.latent.autoencoder_kwargs.block_out_channels = (4, 8, 8)
        c.latent.autoencoder_kwargs.layers_per_block = 1
        c.latent.autoencoder_kwargs.latent_channels = 4
        c.latent.autoencoder_kwargs.norm_num_groups = 4
        c.latent.encode_batch_size = 32
        c.model.kwargs.ch = 8
        c.model.kwargs.num_res_blocks = 1
        c.model.kwargs.attn_resolutions = ()
        c.batch_size = 8
        c.sample.num_samples = 4
        c.sample.num_steps = 2
    return c
