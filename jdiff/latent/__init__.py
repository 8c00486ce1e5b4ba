"""Latent diffusion: models in an autoencoder's latent space, decoded once at the end.

    LatentModel             a bound model on latents + the decoder (and encoder); samplers, guidance
                            and flow maps run on `lm.model` unchanged, `lm.generate` decodes once
    latent_log_likelihood   the PF-ODE likelihood of E(x), reported as a LATENT likelihood
    LatentLikelihood        its result (log p(z) nats, bits per latent dim, NFE, a note)

The autoencoder itself is `jdiff.models.AutoencoderKL` (the Stable Diffusion VAE layout).
"""

from jdiff.latent._model import LATENT_LIKELIHOOD_NOTE as LATENT_LIKELIHOOD_NOTE
from jdiff.latent._model import LatentLikelihood as LatentLikelihood
from jdiff.latent._model import LatentModel as LatentModel
from jdiff.latent._model import latent_log_likelihood as latent_log_likelihood
