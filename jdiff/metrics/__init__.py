"""Sample-quality metrics, and a digit classifier as a feature network for the digit sets.

    sliced_wasserstein        SW_p over random 1-D projections (Bonneel et al. 2015)
    mmd                       unbiased MMD^2 with an RBF kernel (Gretton et al. 2012)
    energy_distance           unbiased energy distance (Szekely & Rizzo 2013)
    gaussian_stats            (mean, covariance) of features
    frechet_distance          Frechet distance of Gaussian fits to features (FID's formula)
    frechet_distance_from_stats
    precision_recall          k-NN manifold precision / recall (Kynkaanniemi et al. 2019)
    DigitClassifier           a small nnx MLP for 8x8 digits / MNIST-5k
    train_digit_classifier    trains it from a seed -> (classifier, held-out accuracy)
    frechet_digit_distance    Frechet distance of its penultimate features ("FDD")
    classifier_accuracy       fraction of samples it assigns to the given labels

Research-standard feature networks and streaming statistics (docs/evaluation.md):

    InceptionV3               pytorch-fid's FID Inception-v3 in nnx: pool3 (2048) and logits (1008)
    inception_preprocess      pixels [0, 255] -> 299 x 299 network input ("pytorch_fid" / "clean" / "tf1")
    DinoV2                    DINOv2 ViT-S/B/L/14 in nnx (FD-DINOv2 features: the CLS token)
    dinov2_preprocess         pixels [0, 255] -> 224 x 224, ImageNet-normalized (EDM2's FD-DINOv2)
    read_weights, write_weights   local .npz / .safetensors weight files ({key: array})
    WeightsError              a weight file with missing, unknown or mis-shaped keys
    resize_images, resize_matrix  the reference implementations' resizes, as exact matrices
    FeatureStats              float64 streaming mean / covariance, mergeable across shards
    InceptionScoreStats       streaming Inception Score over splits
    save_stats, load_stats    reference statistics in the common .npz layout (mu, sigma)

All are pure functions of arrays with explicit keys; samples are flattened to (N, D).
The unbiased estimators (mmd, energy_distance) have expectation exactly 0 for two samples
of one distribution (they can be negative); sliced Wasserstein, Frechet distance and
precision / recall are biased at finite N (the bias shrinks as N grows).
"""

from jdiff.metrics._digit_classifier import DigitClassifier as DigitClassifier
from jdiff.metrics._digit_classifier import classifier_accuracy as classifier_accuracy
from jdiff.metrics._digit_classifier import (
    frechet_digit_distance as frechet_digit_distance,
)
from jdiff.metrics._digit_classifier import (
    train_digit_classifier as train_digit_classifier,
)
from jdiff.metrics._dinov2 import DINOV2_ARCHS as DINOV2_ARCHS
from jdiff.metrics._dinov2 import DinoV2 as DinoV2
from jdiff.metrics._dinov2 import dinov2_preprocess as dinov2_preprocess
from jdiff.metrics._inception import INCEPTION_MODES as INCEPTION_MODES
from jdiff.metrics._inception import InceptionV3 as InceptionV3
from jdiff.metrics._inception import inception_preprocess as inception_preprocess
from jdiff.metrics._resize import RESIZE_METHODS as RESIZE_METHODS
from jdiff.metrics._resize import resize_images as resize_images
from jdiff.metrics._resize import resize_matrix as resize_matrix
from jdiff.metrics._sample_quality import PrecisionRecall as PrecisionRecall
from jdiff.metrics._sample_quality import energy_distance as energy_distance
from jdiff.metrics._sample_quality import frechet_distance as frechet_distance
from jdiff.metrics._sample_quality import (
    frechet_distance_from_stats as frechet_distance_from_stats,
)
from jdiff.metrics._sample_quality import gaussian_stats as gaussian_stats
from jdiff.metrics._sample_quality import mmd as mmd
from jdiff.metrics._sample_quality import precision_recall as precision_recall
from jdiff.metrics._sample_quality import sliced_wasserstein as sliced_wasserstein
from jdiff.metrics._streaming import FeatureStats as FeatureStats
from jdiff.metrics._streaming import InceptionScoreStats as InceptionScoreStats
from jdiff.metrics._streaming import load_stats as load_stats
from jdiff.metrics._streaming import save_stats as save_stats
from jdiff.metrics._weights import WeightsError as WeightsError
from jdiff.metrics._weights import read_weights as read_weights
from jdiff.metrics._weights import write_weights as write_weights
