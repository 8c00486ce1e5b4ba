"""Latent diffusion: models in an autoencoder's latent space, decoded once at the end.

    LatentModel             a bound model on latents + the decoder (and encoder); samplers, guidance
                            and flow maps run on `lm.model` unchanged, `lm.generate` decodes once
    latent_log_likelihood   the PF-ODE likelihood of E(x), reported as a LATENT likelihood
    LatentLikelihood        its result (log p(z) nats, bits per latent dim, NFE, a note)
    load_diffusers_autoencoder   a local diffusers AutoencoderKL folder (SD 1.x/2.x, SDXL, SD3, Flux
                            VAEs: config.json + diffusion_pytorch_model.safetensors) as an AutoencoderKL
    load_diffusers_weights  a diffusers state dict into an AutoencoderKL (names mapped, kernels transposed)
    to_diffusers_state_dict an AutoencoderKL's parameters under diffusers' names and layouts

The autoencoder itself is `jdiff.models.AutoencoderKL` (the Stable Diffusion VAE layout).
"""

from jdiff.latent._diffusers import DIFFUSERS_WEIGHTS as DIFFUSERS_WEIGHTS
from jdiff.latent._diffusers import autoencoder_kwargs_from_diffusers as autoencoder_kwargs_from_diffusers
from jdiff.latent._diffusers import load_diffusers_autoencoder as load_diffusers_autoencoder
from jdiff.latent._diffusers import load_diffusers_weights as load_diffusers_weights
from jdiff.latent._diffusers import to_diffusers_state_dict as to_diffusers_state_dict
from jdiff.latent._model import LATENT_LIKELIHOOD_NOTE as LATENT_LIKELIHOOD_NOTE
from jdiff.latent._model import LatentLikelihood as LatentLikelihood
from jdiff.latent._model import LatentModel as LatentModel
from jdiff.latent._model import latent_log_likelihood as latent_log_likelihood
