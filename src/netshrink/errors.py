"""Exceptions raised by netshrink.

Every error names what is wrong and how to fix it. They subclass the matching
built-in exception so callers can catch either.
"""


class NetshrinkError(Exception):
    """Base class of all netshrink errors."""


class InvalidInputError(NetshrinkError, ValueError):
    """A matrix, tensor or argument is unusable (NaN/Inf, empty, out of range, wrong shape)."""


class UntraceableModelError(NetshrinkError, TypeError):
    """torch.fx could not trace the model, so its cuts cannot be found."""


class UnsupportedCutError(NetshrinkError, ValueError):
    """A place in the model cannot be compressed with the requested method."""


class DatasetNotFoundError(NetshrinkError, FileNotFoundError):
    """The Fashion-MNIST IDX files are not where netshrink looks for them."""


class UnknownModelError(NetshrinkError, KeyError):
    """A zoo name that netshrink does not know."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0]) if self.args else ""


class OutputExistsError(NetshrinkError, FileExistsError):
    """An output path already exists and overwriting was not requested."""


class MissingDependencyError(NetshrinkError, ImportError):
    """An optional package that this feature needs is not installed."""


class DistributedError(NetshrinkError, RuntimeError):
    """The ranks of a process group disagree, or a collective failed (a rank stopped or timed out)."""
