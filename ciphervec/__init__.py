"""ciphervec: a serverless, encrypted vector index speaking the CyborgDB REST v1 API."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ciphervec")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0"
