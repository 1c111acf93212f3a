"""Server TLS credentials that follow their files on disk.

gRPC asks :meth:`CertificateFiles.fetch` for a new certificate configuration
on every incoming handshake (the proxies' port does the same through
:class:`ReloadingContext`). At most once per ``reload_interval_seconds`` it
stats the files (following symlinks: a Kubernetes Secret rotation swaps the
``..data`` symlink, which changes the inode) and, when one changed, reads and
checks the new set. A good set serves every handshake from then on;
established connections keep the certificate they were set up with. A bad set
(unreadable, not PEM, key not matching the certificate, a half-written file) is
logged and the current one kept; it is tried again once the files change again.
Log lines and errors name files and OpenSSL reasons, never their contents.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc

from ..config import ConfigError, TlsSettings

__all__ = ["CertificateFiles", "ReloadingContext", "server_credentials"]

log = logging.getLogger("sipauth.tls")

_Signature = tuple[tuple[int, int, int, int], ...]


class _Unusable(Exception):
    """The files on disk do not make a usable certificate configuration (message: field and reason)."""


class _InFlux(Exception):
    """The files changed while they were being read: look again later."""


def _no_password() -> bytes:
    raise _Unusable("tls.key_file: the private key is encrypted; give it unencrypted (gRPC cannot decrypt it)")


class CertificateFiles:
    """The server certificate, its key and the client CA, reloaded when the files change."""

    def __init__(self, settings: TlsSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self._settings = settings
        self._clock = clock
        self._lock = threading.Lock()
        self._next_check = 0.0
        self._current: _Signature | None = None
        self._rejected: object = None
        # The settings are frozen: which files to watch is known once.
        self._fields = [("tls.cert_file", settings.cert_file), ("tls.key_file", settings.key_file)]
        if settings.client_ca_file is not None:
            self._fields.append(("tls.client_ca_file", settings.client_ca_file))

    def _signature(self) -> _Signature:
        out = []
        for name, path in self._fields:
            try:
                st = os.stat(path)
            except OSError as exc:
                raise _Unusable(f"{name}: cannot read {path}: {exc.strerror}") from None
            out.append((st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size))
        return tuple(out)

    def _contents(self) -> list[bytes]:
        out = []
        for name, path in self._fields:
            try:
                out.append(path.read_bytes())
            except OSError as exc:
                raise _Unusable(f"{name}: cannot read {path}: {exc.strerror}") from None
        return out

    def _check(self, contents: list[bytes]) -> None:
        """Let OpenSSL parse the set: the chain, the key that matches it, the CA certificates."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(self._settings.cert_file, self._settings.key_file, password=_no_password)
        except ssl.SSLError as exc:
            raise _Unusable(
                "tls.cert_file, tls.key_file: not a PEM certificate chain and the private key that matches it "
                f"({exc.reason or 'unreadable'})"
            ) from None
        except OSError as exc:
            raise _Unusable(f"tls.cert_file, tls.key_file: cannot read them: {exc.strerror}") from None
        if self._settings.client_ca_file is not None:
            try:
                context.load_verify_locations(cadata=contents[2].decode("ascii"))
            except (ssl.SSLError, UnicodeDecodeError, ValueError) as exc:
                reason = getattr(exc, "reason", None) or "no PEM certificate found"
                raise _Unusable(f"tls.client_ca_file: not PEM CA certificates ({reason})") from None

    def _read(self) -> tuple[_Signature, list[bytes]]:
        before = self._signature()
        contents = self._contents()
        self._check(contents)
        # OpenSSL read the files by name: make sure they are still the bytes we hold.
        if self._signature() != before or self._contents() != contents:
            raise _InFlux
        return before, contents

    def load(self) -> list[bytes]:
        """The files' contents at start (certificate, key, client CA); ConfigError naming the field when unusable."""
        with self._lock:
            for _ in range(3):
                try:
                    self._current, contents = self._read()
                except _Unusable as exc:
                    raise ConfigError(str(exc)) from None
                except _InFlux:
                    time.sleep(0.1)
                    continue
                self._next_check = self._clock() + self._settings.reload_interval_seconds
                return contents
        raise ConfigError("tls: the certificate files keep changing while they are read")

    def fetch(self) -> list[bytes] | None:
        """The new contents if the files changed into a usable set, else None (keep the current ones)."""
        try:
            return self._fetch()
        except Exception:  # a raise here would fail the handshake; keep serving with what we have
            log.exception("checking the TLS files failed; keeping the current certificate")
            return None

    def _fetch(self) -> list[bytes] | None:
        with self._lock:
            now = self._clock()
            if now < self._next_check:
                return None
            self._next_check = now + self._settings.reload_interval_seconds
            try:
                signature = self._signature()
            except _Unusable as exc:
                self._reject(str(exc), str(exc))
                return None
            if signature in (self._current, self._rejected):
                return None
            try:
                signature, contents = self._read()
            except _InFlux:
                return None
            except _Unusable as exc:
                self._reject(signature, str(exc))
                return None
            self._current, self._rejected = signature, None
            log.info("TLS certificate files reloaded", extra={"files": [str(path) for _, path in self._fields]})
            return contents

    def _reject(self, marker: object, reason: str) -> None:
        """Log a bad file set once; it is not read again until the files change."""
        if marker != self._rejected:
            log.error("new TLS files are not usable; keeping the current certificate", extra={"reason": reason})
        self._rejected = marker


def _grpc_configuration(contents: list[bytes]) -> grpc.ServerCertificateConfiguration:
    cert, key = contents[0], contents[1]
    client_ca = contents[2] if len(contents) > 2 else None
    return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=client_ca)


def server_credentials(settings: TlsSettings) -> grpc.ServerCredentials:
    """Credentials for ``add_secure_port`` that reload the files; client certificates required with a client CA."""
    files = CertificateFiles(settings)
    initial = _grpc_configuration(files.load())

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        contents = files.fetch()
        return None if contents is None else _grpc_configuration(contents)

    return grpc.dynamic_ssl_server_credentials(
        initial, fetch, require_client_authentication=settings.client_ca_file is not None
    )


def _ssl_context(settings: TlsSettings, contents: list[bytes], alpn: list[str]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(alpn)
    # load_cert_chain reads files only: these are the ones CertificateFiles has just checked.
    context.load_cert_chain(settings.cert_file, settings.key_file, password=_no_password)
    if len(contents) > 2:
        context.load_verify_locations(cadata=contents[2].decode("ascii"))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class ReloadingContext(ssl.SSLContext):
    """A server SSLContext whose every new connection uses the files as they are now.

    asyncio (and uvloop) set up each accepted TLS connection with
    ``wrap_bio``; here that asks :class:`CertificateFiles` (at most once per
    ``reload_interval_seconds``) whether the files changed into a usable set,
    and hands the connection to a context built from the newest one.
    """

    _files: CertificateFiles
    _tls: TlsSettings
    _alpn: list[str]
    _current: ssl.SSLContext

    @classmethod
    def create(cls, settings: TlsSettings, alpn: list[str]) -> ReloadingContext:
        """A context serving ``settings``' files (ConfigError when they are not usable at start)."""
        files = CertificateFiles(settings)
        contents = files.load()
        context = cls(ssl.PROTOCOL_TLS_SERVER)
        context._files, context._tls, context._alpn = files, settings, alpn
        context._current = _ssl_context(settings, contents, alpn)
        # What asyncio reads from the context itself (verify mode: whether client certificates are required).
        context.verify_mode = context._current.verify_mode
        return context

    def wrap_bio(self, *args: Any, **kwargs: Any) -> ssl.SSLObject:
        """The TLS state of a new connection, from the newest usable files."""
        contents = self._files.fetch()
        if contents is not None:
            try:
                self._current = _ssl_context(self._tls, contents, self._alpn)
            except (ssl.SSLError, OSError, ValueError) as exc:
                # The files changed again between the check and this read: the next handshake looks again.
                reason = getattr(exc, "reason", None) or type(exc).__name__
                log.error(  # noqa: TRY400 - an OpenSSL reason says it all; never the files' contents
                    "new TLS files are not usable; keeping the current certificate", extra={"reason": reason}
                )
        return self._current.wrap_bio(*args, **kwargs)
