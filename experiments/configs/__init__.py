"""Experiment configs: each module defines get_config(arg=None); see experiments/_lib.py for the keys."""
