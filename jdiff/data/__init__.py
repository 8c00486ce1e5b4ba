"""Data for jdiff: toy 2-D sets, offline real images, users' arrays / folders / tfds, and a
deterministic, resumable, per-process-sharded iterator.

    x, label = load_digits()                       # (1797, 8, 8, 1) in [-1, 1], (1797,)
    it = DataIterator(load_digits(), batch_size=128, seed=0,
                      process_index=jax.process_index(), process_count=jax.process_count())
    batch = next(it)                               # {"x": (128/K, 8, 8, 1), "label": (128/K,)}
    ckpt["data_position"] = it.position            # resume: DataIterator(..., position=saved)
"""

from jdiff.data._common import Dataset as Dataset
from jdiff.data.grain_pipeline import PIPELINES as PIPELINES
from jdiff.data.grain_pipeline import GrainIterator as GrainIterator
from jdiff.data.grain_pipeline import make_iterator as make_iterator
from jdiff.data.images import load_digits as load_digits
from jdiff.data.images import load_mnist5k as load_mnist5k
from jdiff.data.iterator import BatchIterator as BatchIterator
from jdiff.data.iterator import DataIterator as DataIterator
from jdiff.data.iterator import holdout_split as holdout_split
from jdiff.data.sources import DataFileError as DataFileError
from jdiff.data.sources import from_arrays as from_arrays
from jdiff.data.sources import load_image_folder as load_image_folder
from jdiff.data.sources import load_npz as load_npz
from jdiff.data.sources import load_tfds as load_tfds
from jdiff.data.toy import checkerboard as checkerboard
from jdiff.data.toy import default_mixture as default_mixture
from jdiff.data.toy import eight_gaussians as eight_gaussians
from jdiff.data.toy import gaussian_mixture as gaussian_mixture
from jdiff.data.toy import moons as moons
from jdiff.data.toy import swiss_roll as swiss_roll
