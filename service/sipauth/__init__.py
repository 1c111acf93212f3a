"""sipauth: SIP Digest authentication as a gRPC service."""

__all__ = ["__version__"]

__version__ = "0.1.0"
