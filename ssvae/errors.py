"""Exceptions the library raises for problems a user can fix.

Both carry a one-line message that names the problem and, where possible, the fix;
command-line front ends print that line and exit with status 2.
"""


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
