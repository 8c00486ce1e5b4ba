"""Convert a PyTorch checkpoint of a feature network to the .npz / .safetensors jdiff loads.

    python -m experiments.convert_weights --src=pt_inception-2015-12-05-6726825d.pth \\
        --dst=pt_inception-2015-12-05.npz --check=inception
    python -m experiments.convert_weights --src=dinov2_vitl14_pretrain.pth --dst=dinov2_vitl14.safetensors \\
        --check=vitl14

Needs PyTorch (only this script does; jdiff itself never imports it) and a local .pth: jdiff
downloads nothing. The files come from the references (docs/evaluation.md):

    pytorch-fid   https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth
    DINOv2        https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/dinov2_vitl14_pretrain.pth (vits14, vitb14 alike)

Every tensor of the state dict is written under its own key, as float32 (integer tensors keep
their type); a checkpoint that wraps the state dict ({"state_dict": ...} or {"model": ...}) is
unwrapped. --check builds the network abstractly and runs the loader's key and shape check on
the result, so a wrong file fails here, listing the missing and unknown keys.
"""

from __future__ import annotations

import sys

import numpy as np
from absl import app, flags
from flax import nnx

from jdiff import metrics

_SRC = flags.DEFINE_string("src", None, "The PyTorch checkpoint (.pth / .pt).")
_DST = flags.DEFINE_string("dst", None, "The output file (.npz or .safetensors).")
_CHECK = flags.DEFINE_enum(
    "check", None, ["inception", *metrics.DINOV2_ARCHS], "Check the keys and shapes against this network's layout."
)
flags.mark_flags_as_required(["src", "dst"])


def _state_dict(path: str) -> dict:
    import torch  # the user's PyTorch: only this conversion needs it

    obj = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and wrapper in obj and isinstance(obj[wrapper], dict):
            obj = obj[wrapper]
    out = {}
    for key, value in obj.items():
        a = value.detach().cpu().numpy()
        out[key] = a.astype(np.float32) if np.issubdtype(a.dtype, np.floating) else a
    return out


def check(state: dict, network: str) -> None:
    """The loader's key / shape check of `state` against `network` ("inception" or a DINOv2 arch)."""
    if network == "inception":
        net = nnx.eval_shape(lambda: metrics.InceptionV3(rngs=nnx.Rngs(0)))
    else:
        grid = round((state["pos_embed"].shape[1] - 1) ** 0.5) if "pos_embed" in state else 37
        net = nnx.eval_shape(lambda: metrics.DinoV2(network, pos_grid=grid, rngs=nnx.Rngs(0)))
    net.check({k: v.shape for k, v in state.items()})


def main(argv):
    if len(argv) > 1:
        sys.exit(f"error: {argv[1]}: unexpected argument; accepted: --src, --dst, --check")
    try:
        state = _state_dict(_SRC.value)
        if _CHECK.value:
            check(state, _CHECK.value)
        metrics.write_weights(_DST.value, state)
    except (ValueError, FileNotFoundError) as e:  # WeightsError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {_DST.value}: {len(state)} arrays, {sum(int(np.prod(v.shape)) for v in state.values()):,} values")


if __name__ == "__main__":
    app.run(main)
