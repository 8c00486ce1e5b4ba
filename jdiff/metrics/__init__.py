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
