"""The storeflow release; the project image is tagged with it."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("storeflow")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
