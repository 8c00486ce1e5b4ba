"""Latent diffusion: models in an autoencoder's latent space, decoded once at the end.

    LatentModel             a bound model on latents + the decoder (and encoder); samplers, guidance
                            and flow maps run on `lm.model` unchanged, `lm.generate` decodes once
    latent_log_likelihood   the PF-ODE likelihood of E(x), reported as a LATENT likelihood
    LatentLikelihood        its result (log p(z) nats, bits per latent dim, NFE, a note)
    load_diffusers_autoencoder   a local diffusers AutoencoderKL folder (SD 1.x/2.x, SDXL, SD3, Flux
                            VAEs: config.json + diffusion_pytorch_model.safetensors) as an AutoencoderKL
    load_diffusers_weights  a diffusers state dict into an AutoencoderKL (names mapped, kernels transposed)
    to_diffusers_state_dict an AutoencoderKL's parameters under diffusers' names and layouts
    estimate_latent_norm    (scale, shift) = (1 / std, mean) of an autoencoder's latents of some data
    set_latent_norm         store them on the autoencoder (LatentNorm state: saved with checkpoints)
    update_latent_norm      the running estimate a training loss keeps (first batch, then an EMA)
    encode_dataset          a data set's (normalized) latents, batched and jitted
    latent_cache            encode a data set once into per-process shards (resumable), read it all
    write_latent_shard, read_latent_cache, shard_bounds, dataset_fingerprint, autoencoder_fingerprint
    autoencoder_loss        the first-stage objective per example: L1/L2 (+ perceptual) reconstruction,
                            KL weight, optional patch-GAN hinge terms with Esser et al.'s adaptive weight
    autoencoder_loss_terms  every term of it (AutoencoderLoss)
    AutoencoderGAN          the autoencoder and its optional discriminator as one trainable nnx module
    PatchDiscriminator      a PatchGAN discriminator (GroupNorm)
    feature_distance        a perceptual distance from any feature network (LPIPS's form, unweighted)
    adaptive_weight, hinge_discriminator_loss

The autoencoder itself is `jdiff.models.AutoencoderKL` (the Stable Diffusion VAE layout).
"""

from jdiff.latent._cache import CACHE_FORMAT as CACHE_FORMAT
from jdiff.latent._cache import autoencoder_fingerprint as autoencoder_fingerprint
from jdiff.latent._cache import dataset_fingerprint as dataset_fingerprint
from jdiff.latent._cache import latent_cache as latent_cache
from jdiff.latent._cache import read_latent_cache as read_latent_cache
from jdiff.latent._cache import shard_bounds as shard_bounds
from jdiff.latent._cache import write_latent_shard as write_latent_shard
from jdiff.latent._diffusers import DIFFUSERS_WEIGHTS as DIFFUSERS_WEIGHTS
from jdiff.latent._diffusers import autoencoder_kwargs_from_diffusers as autoencoder_kwargs_from_diffusers
from jdiff.latent._diffusers import load_diffusers_autoencoder as load_diffusers_autoencoder
from jdiff.latent._diffusers import load_diffusers_weights as load_diffusers_weights
from jdiff.latent._diffusers import to_diffusers_state_dict as to_diffusers_state_dict
from jdiff.latent._loss import AutoencoderGAN as AutoencoderGAN
from jdiff.latent._loss import AutoencoderLoss as AutoencoderLoss
from jdiff.latent._loss import PatchDiscriminator as PatchDiscriminator
from jdiff.latent._loss import adaptive_weight as adaptive_weight
from jdiff.latent._loss import autoencoder_loss as autoencoder_loss
from jdiff.latent._loss import autoencoder_loss_terms as autoencoder_loss_terms
from jdiff.latent._loss import feature_distance as feature_distance
from jdiff.latent._loss import hinge_discriminator_loss as hinge_discriminator_loss
from jdiff.latent._model import LATENT_LIKELIHOOD_NOTE as LATENT_LIKELIHOOD_NOTE
from jdiff.latent._model import LatentLikelihood as LatentLikelihood
from jdiff.latent._model import LatentModel as LatentModel
from jdiff.latent._model import latent_log_likelihood as latent_log_likelihood
from jdiff.latent._scale import encode_dataset as encode_dataset
from jdiff.latent._scale import estimate_latent_norm as estimate_latent_norm
from jdiff.latent._scale import set_latent_norm as set_latent_norm
from jdiff.latent._scale import update_latent_norm as update_latent_norm
