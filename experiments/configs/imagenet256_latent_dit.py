"""DiT-XL/2 on the Stable Diffusion VAE's latents of ImageNet 256x256 (Peebles & Xie 2023), class-conditional.

Pod launch (every worker runs the same command; see experiments/launch/):
python -m experiments.train --config=experiments/configs/imagenet256_latent_dit.py \
    --config.latent.path=/data/sd-vae-ft-ema --config.latent.cache_dir=gs://bucket/imagenet256_sdvae_latents \
    --config.data.kwargs.path=/data/imagenet/train --workdir=gs://bucket/imagenet256_dit_xl2 \
    --config.distributed=True
Smoke run on a CPU (synthetic 256x256 images, a tiny freshly initialised SD-layout VAE, a tiny DiT):
python -m experiments.train --config=experiments/configs/imagenet256_latent_dit.py:runlocal --workdir=/tmp/in256_dit

The autoencoder is a local diffusers folder of an SD VAE (latent.source = "diffusers": config.json
+ diffusion_pytorch_model.safetensors, e.g. stabilityai/sd-vae-ft-ema, read by
jdiff.latent.load_diffusers_autoencoder; its scaling_factor 0.18215 is the latent normalization):
256x256x3 images -> 32x32x4 latents. The model is DiT-XL/2 (hidden 1152, depth 28, 16 heads,
patch 2: 256 tokens), eps prediction on the linear VP path, AdamW lr 1e-4 constant, batch 256,
EMA 0.9999, label dropout 0.1 and classifier-free guidance 1.5 at sampling (DiT's FID-50k 2.27
setting, 250 DDPM steps). Only :runlocal has been run here: the full run has not. Its data
path is the in-memory one of every jdiff config (an image folder loaded as one array, encoded
once into the latent cache): at ImageNet scale that needs the hosts' memory for the images while
the cache is built (the cache itself, float16, is 1.28M x 32x32x4 x 2 bytes = 10.5 GB).
"""

import ml_collections

from experiments.configs import common


def get_config(arg=None):
    c = common.base_config()
    c.data.name = "image_folder"
    c.data.kwargs.path = "/data/imagenet/train"
    c.data.kwargs.size = (256, 256)
    c.data.kwargs.mode = "RGB"
    c.data.shape = (256, 256, 3)
    c.data.cond = "label"
    c.latent = ml_collections.ConfigDict()
    c.latent.source = "diffusers"
    c.latent.path = "/data/sd-vae-ft-ema"
    c.latent.autoencoder_kwargs = ml_collections.ConfigDict()
    c.latent.posterior = "sample"  # one posterior draw per image, as DiT's feature extraction
    c.latent.cache_dir = ""
    c.latent.cache_dtype = "float16"
    c.latent.encode_batch_size = 256
    c.model.name = "dit"
    c.model.kwargs.image_size = 32
    c.model.kwargs.channels = 4
    c.model.kwargs.patch_size = 2
    c.model.kwargs.hidden = 1152
    c.model.kwargs.depth = 28
    c.model.kwargs.num_heads = 16
    c.model.kwargs.num_classes = 1000
    c.model.kwargs.kind = "eps"
    c.path.name = "vp_linear"
    c.loss.name = "ddpm_loss"
    c.loss.label_dropout = 0.1
    c.guidance = ml_collections.ConfigDict()
    c.guidance.weight = 1.5
    c.batch_size = 256
    c.total_steps = 400_000
    c.ema_decay = 0.9999
    c.optimizer.learning_rate = 1e-4
    c.optimizer.warmup_steps = 0
    c.optimizer.schedule = "constant"
    c.optimizer.weight_decay = 0.0
    c.sample.solver = "ddpm"
    c.sample.grid = "uniform"
    c.sample.num_steps = 250
    c.sample.num_samples = 16
    c.sample_every = 20_000
    c.checkpoint_every = 10_000
    if arg == "runlocal":
        common.runlocal(c, steps=4)
        c.data.name = "synthetic"
        c.data.kwargs = ml_collections.ConfigDict({"n": 16, "shape": (256, 256, 3), "num_classes": 1000})
        c.latent.source = "init"  # the SD VAE's layout at width 8: 256 -> 32, 4 latent channels
        c.latent.path = ""
        c.latent.autoencoder_kwargs.block_out_channels = (4, 4, 8, 8)
        c.latent.autoencoder_kwargs.layers_per_block = 1
        c.latent.autoencoder_kwargs.norm_num_groups = 4
        c.latent.autoencoder_kwargs.mid_block_add_attention = False
        c.latent.encode_batch_size = 8
        c.latent.cache_dtype = "float32"
        c.model.kwargs.hidden = 32
        c.model.kwargs.depth = 1
        c.model.kwargs.num_heads = 2
        c.model.kwargs.patch_size = 4
        c.batch_size = 8  # a multiple of the 8 CPU devices of the tests
        c.sample.num_samples = 2
        c.sample.num_steps = 2
    return c
