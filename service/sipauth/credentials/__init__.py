"""Where HA1s and identities come from."""

from .base import CredentialSource, Identity, UserRecord
from .users_file import UsersFile, UsersFileError, load_users_file

__all__ = ["CredentialSource", "Identity", "UserRecord", "UsersFile", "UsersFileError", "load_users_file"]
