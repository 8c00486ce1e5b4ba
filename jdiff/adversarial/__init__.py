"""Adversarially learned reverse steps: denoising diffusion GANs (Xiao et al. 2022).

A DDGAN replaces the Gaussian reverse step of a diffusion model by a conditional GAN, so that
a few large steps (T = 2 to 8) reach the data. On a time grid t_T > ... > t_0 of any jdiff
path, the generator G(x_t, z, t, cond) predicts x0 from x_t and a latent z, and the step is
the exact Gaussian posterior x_{t_{k-1}} ~ q(x_{t_{k-1}} | x_{t_k}, x0 = G(...)); the last
step returns G's x0_hat. A time-conditional discriminator D(x_prev, x_t, t, cond) tells real
pairs (x_{t_{k-1}}, x_{t_k}) of the forward process from generated ones.

    ddgan = adversarial.DDGAN(pair.generator, jdiff.VPLinear(), adversarial.ddgan_grid(path, 4), latent_dim=32)
    out = adversarial.ddgan_loss(ddgan, pair.discriminator, key, x0, r1_gamma=0.05)   # GANLoss of (B,)
    tx = adversarial.two_player_optimizer(optax.adam(1.6e-4, 0.5, 0.9), optax.adam(1.25e-4, 0.5, 0.9))
    x = adversarial.sample(ddgan, key, path.prior_sample(key, (16, 2)))              # NFE = T

`ddgan_loss(...).loss` is the sum of the two players' non-saturating losses (R1 on real
samples) arranged so one gradient is each network's own; `jdiff.training.make_train_step`
with `two_player_optimizer` then trains both in one jitted step with the usual train state,
EMA, checkpoints and non-finite guard. Networks: `jdiff.models.DDGANMLP` (2-D data) and
`jdiff.models.DDGANConv` (small images), each a `GANPair` with `.generator` and
`.discriminator`.
"""

from jdiff.adversarial._ddgan import DDGAN as DDGAN
from jdiff.adversarial._ddgan import DEFAULT_NUM_STEPS as DEFAULT_NUM_STEPS
from jdiff.adversarial._ddgan import check_ddgan as check_ddgan
from jdiff.adversarial._ddgan import ddgan_grid as ddgan_grid
from jdiff.adversarial._ddgan import posterior_sample as posterior_sample
from jdiff.adversarial._ddgan import sample as sample
from jdiff.adversarial._losses import DEFAULT_R1_GAMMA as DEFAULT_R1_GAMMA
from jdiff.adversarial._losses import GANLoss as GANLoss
from jdiff.adversarial._losses import ddgan_loss as ddgan_loss
from jdiff.adversarial._losses import frozen as frozen
from jdiff.adversarial._optim import PLAYERS as PLAYERS
from jdiff.adversarial._optim import player_labels as player_labels
from jdiff.adversarial._optim import two_player_optimizer as two_player_optimizer
