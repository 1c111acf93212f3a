"""gRPC glue: the servicer and its method table."""

from .servicer import SERVICE_NAME, AuthServicer, generic_handler

__all__ = ["SERVICE_NAME", "AuthServicer", "generic_handler"]
