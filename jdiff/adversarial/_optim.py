"""Two optimizers in one optax transformation: one for the generator, one for the discriminator."""

from __future__ import annotations

import jax
import optax

__all__ = ["PLAYERS", "player_labels", "two_player_optimizer"]

PLAYERS = ("generator", "discriminator")


def _name(entry) -> str | None:
    """The name of a pytree path entry: a dict key (nnx.State, dicts) or an attribute name."""
    for attr in ("key", "name"):
        value = getattr(entry, attr, None)
        if isinstance(value, str):
            return value
    return None


def player_labels(params):
    """The pytree of "generator" / "discriminator" labels of `params`, by their first key.

    `params` is the parameter pytree of a module with the two networks as its attributes
    `generator` and `discriminator` (e.g. `nnx.split(pair, nnx.Param, ...)[1]` of a
    `jdiff.models.GANPair`); any other top-level entry is an error.
    """

    def label(path, _):
        name = _name(path[0]) if path else None
        if name not in PLAYERS:
            raise ValueError(
                f"two_player_optimizer: every parameter must live under `generator` or "
                f"`discriminator`; got one under {jax.tree_util.keystr(path[:1]) or 'the root'}"
            )
        return name

    return jax.tree_util.tree_map_with_path(label, params)


def two_player_optimizer(
    generator: optax.GradientTransformation, discriminator: optax.GradientTransformation
) -> optax.GradientTransformation:
    """One optax transformation that updates the generator's parameters with `generator` and
    the discriminator's with `discriminator` (each with its own state, learning rate and
    betas), through `optax.multi_transform` on `player_labels`.

    With the gradient of `jdiff.adversarial.ddgan_loss(...).loss` (each network's own
    objective's gradient), one `jdiff.training.make_train_step` update is a simultaneous step
    of both players. Xiao et al. (2022) use Adam(b1 = 0.5, b2 = 0.9) for both, lr 1.6e-4 for
    G and 1.25e-4 for D on CIFAR-10.
    """
    for tx, name in ((generator, "generator"), (discriminator, "discriminator")):
        if not isinstance(tx, optax.GradientTransformation):
            raise TypeError(f"`{name}` must be an optax.GradientTransformation; got {type(tx).__name__}")
    return optax.multi_transform({"generator": generator, "discriminator": discriminator}, player_labels)
