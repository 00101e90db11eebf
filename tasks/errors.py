"""The one error type for bad input."""


class DistilleryError(ValueError):
    """Bad input, found before expensive work: the message names the problem and the fix."""
