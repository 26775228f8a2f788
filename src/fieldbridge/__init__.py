"""fieldbridge: connects field sensors to the platforms their owners use."""

__version__ = "0.1.0"
