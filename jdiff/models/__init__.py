"""Networks for jdiff (flax.nnx): `model(x, t, cond) -> prediction of kind model.kind`.

    MLP    residual MLP with time/class embedding for low-dimensional data (x: (B, D))
    UNet   DDPM++-style U-Net for images (x: (B, H, W, C), NHWC)
    DiT    Diffusion Transformer with adaLN-Zero conditioning (Peebles & Xie 2023)
    FlowMapMLP  residual MLP of two times, net(x, t, s, cond), for jdiff.flowmaps.FlowMap
    AutoencoderKL  the Stable Diffusion VAE layout (encode -> posterior, decode) for jdiff.latent
    DDGANMLP, DDGANConv  generator + discriminator pairs (GANPair) for jdiff.adversarial
    NestedUNet  nested multi-resolution U-Net, net(levels, t, cond) -> levels, for jdiff.nested

Every network takes the path time t in [0, 1] (a scalar or (B,)), cond = None or int
class labels (B,) with a null class `num_classes` for classifier-free guidance, and a
static `kind` naming the prediction it is trained to output.
"""

from jdiff.models.autoencoder import AutoencoderKL as AutoencoderKL
from jdiff.models.ddgan import DDGANConv as DDGANConv
from jdiff.models.ddgan import DDGANMLP as DDGANMLP
from jdiff.models.ddgan import DiscriminatorConv as DiscriminatorConv
from jdiff.models.ddgan import DiscriminatorMLP as DiscriminatorMLP
from jdiff.models.ddgan import GANPair as GANPair
from jdiff.models.ddgan import GeneratorConv as GeneratorConv
from jdiff.models.ddgan import GeneratorMLP as GeneratorMLP
from jdiff.models.dit import DiT as DiT
from jdiff.models.embeddings import ClassEmbedding as ClassEmbedding
from jdiff.models.embeddings import FourierFeatures as FourierFeatures
from jdiff.models.embeddings import FourierFrequencies as FourierFrequencies
from jdiff.models.embeddings import TimeEmbedding as TimeEmbedding
from jdiff.models.embeddings import sinusoidal_embedding as sinusoidal_embedding
from jdiff.models.flowmap_mlp import FlowMapMLP as FlowMapMLP
from jdiff.models.mlp import MLP as MLP
from jdiff.models.nested_unet import NestedUNet as NestedUNet
from jdiff.models.unet import UNet as UNet
