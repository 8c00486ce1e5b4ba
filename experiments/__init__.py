"""Experiments: ml-collections configs and absl entry points around the jdiff library.

`experiments._lib` re-exports the importable logic (train_and_evaluate, sample_workdir,
recipe_for, ...) that train.py, sample.py, evaluate.py, demo.py and the Colab notebook call;
experiments/_lib.py lists the modules it comes from.
"""
