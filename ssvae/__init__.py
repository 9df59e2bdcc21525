"""ssvae: the semi-supervised VAE of Pyro's tutorial, its data, estimators and training.

This package knows nothing of the benchmark harness (``bench``): it trains and measures
one configuration at a time.
"""
from .config import RunConfig, resolve_labels
from .errors import ConfigError, DataError, DivergedError
from .estimators import REGISTRY, get_estimator

__version__ = "0.1.0"
__all__ = ["RunConfig", "resolve_labels", "ConfigError", "DataError", "DivergedError",
           "REGISTRY", "get_estimator", "__version__"]
