"""ssvae: the semi-supervised VAE of Pyro's tutorial, its data, estimators and training.

This package knows nothing of the benchmark harness (``bench``): it trains and measures
one configuration at a time.
"""
from .config import RunConfig, resolve_labels
from .errors import ConfigError, DataError, DivergedError

__version__ = "0.1.0"


def __getattr__(name: str):
    """``REGISTRY`` and ``get_estimator`` on first use: importing the package (its config and errors, as a
    command line's ``--help`` does) does not import torch and Pyro."""
    if name in ("REGISTRY", "get_estimator"):
        from . import estimators

        return getattr(estimators, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["RunConfig", "resolve_labels", "ConfigError", "DataError", "DivergedError",
           "REGISTRY", "get_estimator", "__version__"]
