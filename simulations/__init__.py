"""Runnable experiments: the registry, the CLI (`python -m simulations`), datasets and the Flower apps.

The only package that composes `fedsketch`, `dpopt` and `models`.
"""
