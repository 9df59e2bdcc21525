"""Exceptions the library raises for problems a user can fix.

Both carry a one-line message that names the problem and, where possible, the fix;
command-line front ends print that line and exit with status 2.
"""
import re


class ConfigError(ValueError):
    """A configuration value is invalid (unknown estimator, bad label count, no GPU...)."""


class DataError(RuntimeError):
    """The data set cannot be found or read (and could not be downloaded)."""


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite, or (``reason``) a distribution's parameter left its support.

    ``step`` is the global optimisation step (0-based) at which it happened and
    ``epoch`` the epoch (1-based).
    """

    def __init__(self, step: int, epoch: int, loss: float, kind: str, reason: str = ""):
        super().__init__(f"{reason or f'loss became {loss}'} at step {step} (epoch {epoch}, {kind} batch)")
        self.step = step
        self.epoch = epoch
        self.loss = loss
        self.kind = kind


_LEFT_SUPPORT = re.compile(r"Expected parameter (\w+) .*?of distribution (\w+).*?to satisfy the constraint "
                           r"(.+?), but found invalid values", re.S)


def left_support(exc: ValueError) -> str:
    """"parameter scale of Normal left its support GreaterThan(lower_bound=0.0)" when ``exc`` is torch's check of
    a distribution's argument (e.g. a scale ``exp(...)`` that underflowed to 0 after a step too large, the
    parameters still finite), else ""."""
    m = _LEFT_SUPPORT.search(str(exc))
    return f"parameter {m.group(1)} of {m.group(2)} left its support {m.group(3)}" if m else ""
