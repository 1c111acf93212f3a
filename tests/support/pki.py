"""Throwaway certificate authorities and certificates (trustme), written as PEM files for sipauth and its clients."""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sipauth_client import TlsConfig

__all__ = ["SERVER_NAME", "ClientCert", "issue_client", "server_files", "swap_secret", "write_secret"]

#: The name in the server certificates; clients dial 127.0.0.1 and check this name.
SERVER_NAME = "sipauth.sip.svc"


@dataclass(frozen=True)
class ClientCert:
    """A proxy's certificate and key files, and the TLS settings of a client using them."""

    cert_file: Path
    key_file: Path

    def tls(self, server_ca: Path) -> TlsConfig:
        """Client TLS settings: trust ``server_ca``, present this certificate."""
        return TlsConfig(ca_file=server_ca, cert_file=self.cert_file, key_file=self.key_file, server_name=SERVER_NAME)


def issue_client(
    ca: trustme.CA,
    folder: Path,
    name: str,
    *,
    dns: Sequence[str] = (),
    uris: Sequence[str] = (),
    common_name: str = "proxy",
) -> ClientCert:
    """A client certificate signed by ``ca`` with these SANs and common name (trustme cannot make URI SANs)."""
    ca_key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    )
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    names += [x509.UniformResourceIdentifier(u) for u in uris]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    folder.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = folder / f"{name}.crt", folder / f"{name}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return ClientCert(cert_file, key_file)


def server_files(server_ca: trustme.CA, client_ca: trustme.CA) -> dict[str, bytes]:
    """The files of a sipauth TLS Secret: tls.crt, tls.key (for SERVER_NAME and 127.0.0.1) and client-ca.crt."""
    leaf = server_ca.issue_cert(SERVER_NAME, "127.0.0.1")
    return {
        "tls.crt": b"".join(pem.bytes() for pem in leaf.cert_chain_pems),
        "tls.key": leaf.private_key_pem.bytes(),
        "client-ca.crt": client_ca.cert_pem.bytes(),
    }


def write_secret(folder: Path, files: dict[str, bytes]) -> None:
    """Lay ``files`` out as Kubernetes mounts a Secret: name -> ..data/name, ..data -> a versioned folder."""
    folder.mkdir(parents=True, exist_ok=True)
    swap_secret(folder, files)
    for name in files:
        (folder / name).symlink_to(Path("..data") / name)


def swap_secret(folder: Path, files: dict[str, bytes]) -> None:
    """Rotate the Secret as the kubelet does: write a new version folder, then swap ``..data`` atomically."""
    version = folder / f"..v{len(list(folder.glob('..v*'))) + 1:03d}"
    version.mkdir()
    for name, content in files.items():
        (version / name).write_bytes(content)
    staging = folder / "..data_tmp"
    staging.symlink_to(version.name)
    os.replace(staging, folder / "..data")
