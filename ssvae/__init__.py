"""ssvae: the semi-supervised VAE of Pyro's tutorial, its data, estimators and training.

This package knows nothing of the benchmark harness (``bench``): it trains and measures
one configuration at a time. Importing it loads the config and errors only (no torch, no Pyro: a command
line's ``--help`` stays fast); the estimator registry is ``ssvae.estimators.REGISTRY``.
"""
from .config import RunConfig, resolve_labels
from .errors import ConfigError, DataError, DivergedError

__version__ = "0.1.0"


__all__ = ["RunConfig", "resolve_labels", "ConfigError", "DataError", "DivergedError", "__version__"]
