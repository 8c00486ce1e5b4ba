"""Experiments: ml-collections configs and absl entry points around the jdiff library.

`experiments._lib` holds the importable logic (train_and_evaluate, sample_workdir) that
train.py, sample.py, demo.py and the Colab notebook call.
"""
