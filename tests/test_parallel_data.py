"""The grain input pipeline (jdiff.data.GrainIterator) and the in-memory DataIterator behind one
interface: per-process shares, epochs, exact resume from the checkpointed position (grain's own
iterator state), and a train run on grain batches that resumes bit for bit after a SIGTERM."""

import os
import signal

import jax
import numpy as np
import pytest

from experiments import _lib
from experiments.configs import digits_mlp
from jdiff import data


def _arrays(n=103):
    x = np.arange(n * 4, dtype=np.float32).reshape(n, 2, 2, 1)
    return {"x": x, "label": np.arange(n, dtype=np.int32)}


def test_grain_shares_epochs_and_seed():
    arrays, batch, k = _arrays(), 12, 3
    its = [data.GrainIterator(arrays, batch, seed=5, process_index=i, process_count=k) for i in range(k)]
    assert all(isinstance(it, data.BatchIterator) for it in its)
    seen = []
    for i, it in enumerate(its):
        epoch = [next(it) for _ in range(it.steps_per_epoch)]
        labels = np.concatenate([b["label"] for b in epoch])
        assert all(b["x"].shape == (4, 2, 2, 1) for b in epoch)
        np.testing.assert_array_equal(epoch[0]["x"][:, 0, 0, 0], 4.0 * epoch[0]["label"])  # rows stay together
        assert len(set(labels)) == len(labels) == it.steps_per_epoch * 4  # no example twice in an epoch
        assert set(labels) <= set(range(i, 103, k))  # process i reads only its share
        assert it.epoch == 1 and it.position == it.steps_per_epoch
        nxt = np.concatenate([next(it)["label"] for _ in range(it.steps_per_epoch)])
        assert list(nxt) != list(labels) and set(nxt) <= set(range(i, 103, k))  # reshuffled each epoch
        seen.append(set(labels))
    assert not (seen[0] & seen[1]) and not (seen[1] & seen[2])  # the shares are disjoint
    again = data.GrainIterator(arrays, batch, seed=5, process_index=1, process_count=k)
    other = data.GrainIterator(arrays, batch, seed=6, process_index=1, process_count=k)
    np.testing.assert_array_equal(next(again)["label"], its[1].batch(0)["label"])
    assert list(next(other)["label"]) != list(its[1].batch(0)["label"])
    with pytest.raises(ValueError, match="`batch_size` \\(global\\) must be a positive multiple of process_count=3"):
        data.GrainIterator(arrays, 10, process_count=3)


@pytest.mark.parametrize("pipeline", ["grain", "memory"])
def test_resume_from_the_position_is_exact(pipeline):
    arrays = _arrays()
    it = data.make_iterator(arrays, 16, seed=2, process_index=1, process_count=2, pipeline=pipeline)
    for _ in range(9):  # past the first epoch (51 examples of this process -> 3 batches of 8)
        next(it)
    state = it.get_state()
    assert state == {"next_index": 9} == {"next_index": it.position}
    if pipeline == "grain":
        assert it._iter.get_state() == state  # grain's own iterator state is the position
    want = [next(it) for _ in range(5)]
    for resumed in (
        data.make_iterator(arrays, 16, seed=2, process_index=1, process_count=2, position=9, pipeline=pipeline),
        data.make_iterator(arrays, 16, seed=2, process_index=1, process_count=2, pipeline=pipeline),
    ):
        if resumed.position == 0:
            resumed.set_state(state)
        for w in want:
            got = next(resumed)
            for key in w:
                np.testing.assert_array_equal(got[key], w[key])


def test_make_iterator_chooses_and_checks():
    images, vectors = _arrays(), {"x": np.zeros((40, 2), np.float32)}
    assert isinstance(data.make_iterator(images, 8), data.GrainIterator)
    assert isinstance(data.make_iterator(vectors, 8), data.DataIterator)
    assert isinstance(data.make_iterator(images, 8, pipeline="memory"), data.DataIterator)
    doubled = data.make_iterator(images, 8, pipeline="grain", transform=lambda b: {**b, "x": 2 * b["x"]})
    b = next(doubled)
    np.testing.assert_array_equal(b["x"][:, 0, 0, 0], 8.0 * b["label"])
    with pytest.raises(ValueError, match="`pipeline` must be one of auto, grain, memory"):
        data.make_iterator(images, 8, pipeline="tfdata")
    with pytest.raises(ValueError, match="num_threads: options of the grain pipeline"):
        data.make_iterator(vectors, 8, num_threads=4)


def _host(tree):
    def leaf(x):
        return np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x)

    return jax.tree.map(leaf, tree)


def test_training_on_grain_batches_resumes_bit_for_bit(tmp_path):
    """digits (images: the grain pipeline by default) for 2k steps, against k steps, SIGTERM, and a
    rerun of the same workdir: the same final train state, data position included."""
    k = 3
    config = digits_mlp.get_config("runlocal")
    config.total_steps, config.checkpoint_every, config.sample_every = 2 * k, 1000, 0
    config.lock()
    assert config.data.pipeline == "auto"
    final = {}

    def keep(name):
        def hook(step, state, metrics):
            if step == 2 * k:
                final[name] = _host(state)

        return hook

    _lib.train_and_evaluate(config, str(tmp_path / "a"), hooks=[keep("a")])

    def preempt(step, state, metrics):
        if step == k:
            os.kill(os.getpid(), signal.SIGTERM)

    r = _lib.train_and_evaluate(config, str(tmp_path / "b"), hooks=[preempt])
    assert r["preempted"] and r["step"] == k
    _lib.train_and_evaluate(config, str(tmp_path / "b"), hooks=[keep("b")])
    a, b = final["a"], final["b"]
    assert int(b.data_position) == 2 * k
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)
