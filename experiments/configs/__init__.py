"""Experiment configs: each module defines get_config(arg=None); see experiments/_config.py for the keys."""
