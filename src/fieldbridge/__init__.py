"""fieldbridge: connects field sensors to the platforms their owners use."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fieldbridge")  # pyproject.toml's version, as installed
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
