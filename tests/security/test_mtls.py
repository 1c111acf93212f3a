"""Mutual TLS between the proxies and sipauth: handshake, allowlist, rotation on disk, plaintext rules, health port."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import trustme
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from sipauth.app import RunningServer, start_server
from sipauth.authenticator import Decision, VerifyRequest
from sipauth.client_allowlist import ClientAllowlist, PeerNames
from sipauth.config import ConfigError, TlsSettings, load_settings
from sipauth.server.caller import current_caller
from sipauth.server.tls import CertificateFiles
from sipauth_client import AsyncSipauthClient, TlsConfig, auth_pb2
from tests.conftest import example_settings, ports_for, target_of
from tests.support.answers import answer_for
from tests.support.pki import SERVER_NAME, ClientCert, issue_client, server_files, swap_secret, write_secret
from tests.support.procs import free_port
from tests.support.sipauth_process import SipauthProcess

pytestmark = pytest.mark.security

URI = "sip:bob@example.test"
SPIFFE = "spiffe://cluster.local/ns/sip/sa/kamailio"
ALLOWED = [SPIFFE, "*.proxies.sip.svc", "CN=legacy-proxy"]
#: A fresh connection (and so a fresh handshake) for every client, never one shared between channels.
OWN_CONNECTION = (("grpc.use_local_subchannel_pool", 1),)


@dataclass
class Pki:
    """A server CA and a client CA, the server's files laid out as a Kubernetes Secret, and client certificates."""

    folder: Path
    server_ca: trustme.CA
    client_ca: trustme.CA

    @property
    def secret(self) -> Path:
        """The mounted Secret folder."""
        return self.folder / "secret"

    def server_ca_file(self, ca: trustme.CA | None = None) -> Path:
        """A PEM file with ``ca`` (default: the current server CA) for clients to trust."""
        ca = ca or self.server_ca
        path = self.folder / f"server-ca-{id(ca)}.crt"
        ca.cert_pem.write_to_path(str(path))
        return path

    def client(self, name: str, ca: trustme.CA | None = None, **names: Any) -> ClientCert:
        """A proxy certificate signed by ``ca`` (default: the client CA)."""
        return issue_client(ca or self.client_ca, self.folder / "clients", name, **names)

    def tls(self, name: str = "kamailio", ca: trustme.CA | None = None, **names: Any) -> TlsConfig:
        """Client TLS settings trusting the current server CA, with a new certificate (default: the SPIFFE one)."""
        if not names:
            names = {"uris": [SPIFFE]}
        return self.client(name, ca, **names).tls(self.server_ca_file())

    def settings(self, **overrides: Any) -> dict[str, Any]:
        """The ``tls:`` section for the Secret, checking the files on every handshake."""
        return {
            "cert_file": str(self.secret / "tls.crt"),
            "key_file": str(self.secret / "tls.key"),
            "client_ca_file": str(self.secret / "client-ca.crt"),
            "allowed_clients": ALLOWED,
            "reload_interval_seconds": 0,
            **overrides,
        }


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    """Fresh CAs, and the server certificate, key and client CA mounted as a Secret."""
    pki = Pki(tmp_path / "pki", trustme.CA(), trustme.CA())
    write_secret(pki.secret, server_files(pki.server_ca, pki.client_ca))
    return pki


def _client(target: str, tls: TlsConfig) -> AsyncSipauthClient:
    return AsyncSipauthClient(target, timeout=5, retries=0, tls=tls, channel_options=OWN_CONNECTION)


async def login(client: AsyncSipauthClient) -> auth_pb2.VerifyResponseResponse:
    """IssueChallenge, then alice's answer through VerifyResponse, as a proxy does."""
    challenge = await client.issue_challenge(method="INVITE", proxy=True, request_uri=URI)
    authorization = answer_for(challenge, username="alice", password="wonderland", method="INVITE", uri=URI)
    return await client.verify_response(authorization=authorization, method="INVITE", request_uri=URI, proxy=True)


async def login_over_new_channel(target: str, tls: TlsConfig) -> auth_pb2.VerifyResponseResponse:
    """:func:`login` through a client of its own (a new connection and handshake)."""
    async with _client(target, tls) as client:
        return await login(client)


async def refusal(target: str, tls: TlsConfig) -> grpc.StatusCode:
    """The status a login over a new channel fails with."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await login_over_new_channel(target, tls)
    code: grpc.StatusCode = info.value.code()
    return code


@pytest.fixture
async def mtls_server(pki: Pki, server_factory: Callable[..., Any], port_kind: str) -> RunningServer:
    """An in-process sipauth with mutual TLS and the allowlist, on 127.0.0.1 (and on the proxies' port)."""
    running: RunningServer = await server_factory(tls=pki.settings(), **ports_for(port_kind))
    return running


@pytest.mark.parametrize(
    ("names", "identity"),
    [
        ({"uris": [SPIFFE], "dns": ["kamailio.sip.svc"]}, SPIFFE),
        ({"dns": ["kamailio-0.proxies.sip.svc"]}, "kamailio-0.proxies.sip.svc"),
        ({"common_name": "legacy-proxy"}, "CN=legacy-proxy"),
    ],
    ids=["uri-san", "wildcard-dns-san", "common-name"],
)
async def test_allowed_client_certificate_logs_in(
    pki: Pki, mtls_server: RunningServer, monkeypatch: pytest.MonkeyPatch, names: dict[str, Any], identity: str
) -> None:
    """A proxy whose certificate matches an allowlist entry logs in (challenge + ACCEPT) and is the recorded caller."""
    callers: list[str] = []
    verify = mtls_server.app.authenticator.verify

    async def spy(request: VerifyRequest) -> Decision:
        callers.append(current_caller.get())
        return await verify(request)

    monkeypatch.setattr(mtls_server.app.authenticator, "verify", spy)
    verdict = await login_over_new_channel(target_of(mtls_server), pki.tls(**names))
    assert verdict.verdict == auth_pb2.VERDICT_ACCEPT, verdict.reason
    assert callers == [identity]


async def test_no_client_certificate_is_refused_at_the_handshake(pki: Pki, mtls_server: RunningServer) -> None:
    """A client that trusts the server but shows no certificate never gets a connection (UNAVAILABLE)."""
    tls = TlsConfig(ca_file=pki.server_ca_file(), server_name=SERVER_NAME)
    assert await refusal(target_of(mtls_server), tls) == grpc.StatusCode.UNAVAILABLE


async def test_certificate_from_an_unknown_ca_is_refused_at_the_handshake(pki: Pki, mtls_server: RunningServer) -> None:
    """An allowlisted name in a certificate the client CA did not sign is refused at the handshake."""
    stranger = trustme.CA()
    assert await refusal(target_of(mtls_server), pki.tls("forged", ca=stranger)) == grpc.StatusCode.UNAVAILABLE


async def test_certificate_outside_the_allowlist_is_denied_on_every_rpc(pki: Pki, mtls_server: RunningServer) -> None:
    """A client-CA certificate with no allowlisted name gets PERMISSION_DENIED on sipauth, health and reflection."""
    tls = pki.tls(
        "intruder",
        uris=["spiffe://cluster.local/ns/sip/sa/intruder", "urn:kamailio.sip.svc"],
        # the wildcard covers exactly one label: neither its base nor two labels match
        dns=["proxies.sip.svc", "a.b.proxies.sip.svc", "legacy-proxy"],
        common_name="kamailio-0.proxies.sip.svc",
    )
    assert await refusal(target_of(mtls_server), tls) == grpc.StatusCode.PERMISSION_DENIED
    options = (("grpc.ssl_target_name_override", SERVER_NAME), *OWN_CONNECTION)
    async with grpc.aio.secure_channel(target_of(mtls_server), tls.credentials(), options=options) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as health:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.value.code() == grpc.StatusCode.PERMISSION_DENIED
        stream = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        with pytest.raises(grpc.aio.AioRpcError) as listing:
            async for _ in stream:
                pass
        assert listing.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_empty_allowlist_admits_any_certificate_of_the_client_ca(
    pki: Pki, server_factory: Callable[..., Any], port_kind: str
) -> None:
    """With no allowed_clients, every certificate the client CA signed may call, and no other."""
    server: RunningServer = await server_factory(tls=pki.settings(allowed_clients=[]), **ports_for(port_kind))
    anyone = pki.tls("anyone", dns=["whatever.example.net"])
    assert (await login_over_new_channel(target_of(server), anyone)).verdict == auth_pb2.VERDICT_ACCEPT
    assert await refusal(target_of(server), pki.tls("forged", ca=trustme.CA())) == grpc.StatusCode.UNAVAILABLE


async def test_rotated_certificates_serve_new_handshakes_without_restart(pki: Pki, mtls_server: RunningServer) -> None:
    """After the Secret is swapped on disk (new server CA, new client CA), new connections use the new files only."""
    target = target_of(mtls_server)
    old_tls = pki.tls("kamailio-old")
    async with _client(target, old_tls) as kept:
        assert (await login(kept)).verdict == auth_pb2.VERDICT_ACCEPT
        old_server_ca, old_client_ca = pki.server_ca, pki.client_ca
        pki.server_ca, pki.client_ca = trustme.CA(), trustme.CA()
        swap_secret(pki.secret, server_files(pki.server_ca, pki.client_ca))

        new_tls = pki.tls("kamailio-new")
        assert (await login_over_new_channel(target, new_tls)).verdict == auth_pb2.VERDICT_ACCEPT
        # the old server certificate is gone: a client trusting only the old server CA cannot connect
        assert await refusal(target, old_tls) == grpc.StatusCode.UNAVAILABLE
        # the old client CA is no longer trusted, even by a client that trusts the new server
        old_client = pki.client("kamailio-old-ca", ca=old_client_ca, uris=[SPIFFE])
        assert await refusal(target, old_client.tls(pki.server_ca_file())) == grpc.StatusCode.UNAVAILABLE
        assert old_server_ca is not pki.server_ca
        # the connection made before the rotation is not torn down
        assert (await login(kept)).verdict == auth_pb2.VERDICT_ACCEPT


async def test_unusable_new_files_keep_the_current_certificate(
    pki: Pki, mtls_server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A rotated Secret whose key does not match its certificate is logged without key material and not used."""
    target = target_of(mtls_server)
    good = server_files(pki.server_ca, pki.client_ca)
    new_ca = trustme.CA()
    mismatched = {**server_files(new_ca, pki.client_ca), "tls.key": good["tls.key"]}
    swap_secret(pki.secret, mismatched)
    assert (await login_over_new_channel(target, pki.tls("still-old"))).verdict == auth_pb2.VERDICT_ACCEPT
    errors = [r for r in caplog.records if r.name == "sipauth.tls" and r.levelname == "ERROR"]
    assert errors, caplog.text
    assert "tls.key_file" in errors[0].__dict__["reason"]
    for key in (good["tls.key"], mismatched["tls.key"]):
        body = key.decode().splitlines()[1]
        assert body not in caplog.text
    assert "PRIVATE KEY" not in caplog.text

    swap_secret(pki.secret, server_files(new_ca, pki.client_ca))
    pki.server_ca = new_ca
    assert (await login_over_new_channel(target, pki.tls("after-fix"))).verdict == auth_pb2.VERDICT_ACCEPT


async def test_bad_files_at_start_name_the_field_without_key_material(pki: Pki) -> None:
    """A key that does not match the certificate stops the start with a ConfigError naming the fields, not the key."""
    other = trustme.CA().issue_cert(SERVER_NAME)
    wrong_key = pki.folder / "wrong.key"
    other.private_key_pem.write_to_path(str(wrong_key))
    with pytest.raises(ConfigError, match=r"tls\.key_file") as info:
        await start_server(example_settings(tls=pki.settings(key_file=str(wrong_key))))
    assert "PRIVATE KEY" not in str(info.value)
    assert other.private_key_pem.bytes().decode().splitlines()[1] not in str(info.value)
    with pytest.raises(ConfigError, match=r"tls\.client_ca_file: cannot read"):
        await start_server(example_settings(tls=pki.settings(client_ca_file=str(pki.folder / "missing.crt"))))


@pytest.mark.parametrize("listen", ["0.0.0.0:50051", "[::]:50051", "192.0.2.10:50051"])
def test_plaintext_on_a_non_loopback_address_is_refused(tmp_path: Path, pki: Pki, listen: str) -> None:
    """Listening without TLS beyond loopback is a ConfigError naming listen and tls, unless allow_plaintext is set."""
    config = tmp_path / "sipauth.yaml"
    config.write_text(yaml.safe_dump({"listen": listen, "users_file": "users.yaml"}))
    with pytest.raises(ConfigError, match=r"listen: .*tls.*allow_plaintext"):
        load_settings(config, environ={})
    assert load_settings(config, environ={"SIPAUTH_ALLOW_PLAINTEXT": "true"}).allow_plaintext
    assert load_settings(config, environ={"SIPAUTH_TLS": yaml.safe_dump(pki.settings(), default_flow_style=True)})


def test_the_proxies_port_follows_the_same_plaintext_rule(tmp_path: Path, pki: Pki) -> None:
    """proxy_listen beyond loopback needs tls or allow_plaintext, and a port of its own."""
    config = tmp_path / "sipauth.yaml"
    config.write_text(yaml.safe_dump({"listen": "127.0.0.1:50051", "proxy_listen": "0.0.0.0:50052"}))
    with pytest.raises(ConfigError, match=r"proxy_listen: .*tls.*allow_plaintext"):
        load_settings(config, environ={})
    assert load_settings(config, environ={"SIPAUTH_ALLOW_PLAINTEXT": "true"}).proxy_listen == "0.0.0.0:50052"
    assert load_settings(config, environ={"SIPAUTH_TLS": yaml.safe_dump(pki.settings(), default_flow_style=True)})
    for taken in ("127.0.0.1:50051", "127.0.0.1:8081"):
        config.write_text(
            yaml.safe_dump({"listen": "127.0.0.1:50051", "health_listen": "127.0.0.1:8081", "proxy_listen": taken})
        )
        with pytest.raises(ConfigError, match="proxy_listen: must differ"):
            load_settings(config, environ={})


@pytest.mark.parametrize("listen", ["127.0.0.1:0", "127.8.9.10:0", "[::1]:0", "localhost:0"])
def test_plaintext_on_loopback_is_allowed(tmp_path: Path, listen: str) -> None:
    """Loopback addresses (127.0.0.0/8, ::1, localhost) may listen in plaintext without allow_plaintext."""
    config = tmp_path / "sipauth.yaml"
    config.write_text(yaml.safe_dump({"listen": listen}))
    assert load_settings(config, environ={}).tls is None


def test_real_process_refuses_plaintext_on_all_interfaces(sipauth_process: Callable[..., SipauthProcess]) -> None:
    """`sipauth serve` on 0.0.0.0 without tls exits with the reason instead of listening."""
    with pytest.raises(RuntimeError, match="allow_plaintext"):
        sipauth_process({"listen": "0.0.0.0:0"})


def test_relative_tls_paths_resolve_against_the_settings_file(tmp_path: Path) -> None:
    """tls file paths in a settings file are relative to that file, like the other file settings."""
    config = tmp_path / "conf" / "sipauth.yaml"
    config.parent.mkdir()
    tls = {"cert_file": "tls/tls.crt", "key_file": "tls/tls.key", "client_ca_file": "tls/ca.crt"}
    config.write_text(yaml.safe_dump({"tls": tls}))
    settings = load_settings(config, environ={})
    assert settings.tls is not None
    assert settings.tls.cert_file == config.parent / "tls" / "tls.crt"
    assert settings.tls.key_file == config.parent / "tls" / "tls.key"
    assert settings.tls.client_ca_file == config.parent / "tls" / "ca.crt"


@pytest.mark.parametrize(
    ("tls", "message"),
    [
        ({"allowed_clients": ["*.com"]}, "allowed_clients"),
        ({"allowed_clients": ["a*.sip.svc"]}, "allowed_clients"),
        ({"allowed_clients": ["CN="]}, "allowed_clients"),
        ({"allowed_clients": [" kamailio.sip.svc"]}, "allowed_clients"),
        ({"allowed_clients": ["kamailio.sip.svc"], "client_ca_file": None}, "client_ca_file"),
        ({"reload_interval_seconds": -1}, "reload_interval_seconds"),
        ({"cipher": "RC4"}, "cipher"),
    ],
)
def test_invalid_tls_settings_name_the_field(tmp_path: Path, tls: dict[str, Any], message: str) -> None:
    """Each malformed tls setting stops the start with a ConfigError naming it."""
    section = {"cert_file": "tls.crt", "key_file": "tls.key", "client_ca_file": "ca.crt", **tls}
    config = tmp_path / "sipauth.yaml"
    config.write_text(yaml.safe_dump({"tls": section}))
    with pytest.raises(ConfigError, match=message):
        load_settings(config, environ={})


def test_allowlist_matches_each_name_kind_only_against_its_own_kind() -> None:
    """DNS entries match DNS SANs (one wildcard label, any case), URI entries URI SANs, CN= entries the CN."""
    allowlist = ClientAllowlist(ALLOWED)
    assert allowlist.admit(PeerNames(dns=("Kamailio-0.Proxies.SIP.svc",))) == "Kamailio-0.Proxies.SIP.svc"
    assert allowlist.admit(PeerNames(uris=(SPIFFE,), common_name="legacy-proxy")) == SPIFFE
    assert allowlist.admit(PeerNames(common_name="legacy-proxy")) == "CN=legacy-proxy"
    assert allowlist.admit(PeerNames(dns=("legacy-proxy",), uris=("x.proxies.sip.svc:1",))) is None
    assert allowlist.admit(PeerNames(common_name=SPIFFE)) is None
    assert allowlist.admit(PeerNames(dns=("*.proxies.sip.svc",))) is None
    assert ClientAllowlist([]).admit(PeerNames(dns=("any.example.net",))) == "any.example.net"


async def test_health_port_answers_in_plaintext(pki: Pki, server_factory: Callable[..., Any]) -> None:
    """health_listen serves grpc.health.v1 without TLS (for Kubernetes probes) and nothing else."""
    server: RunningServer = await server_factory(tls=pki.settings(), health_listen="127.0.0.1:0")
    assert server.health_port not in (0, server.port)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.health_port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as other:
            await AsyncSipauthClient(f"127.0.0.1:{server.health_port}", timeout=5, retries=0).issue_challenge(
                method="INVITE"
            )
        assert other.value.code() == grpc.StatusCode.UNIMPLEMENTED
    async with grpc.aio.insecure_channel(target_of(server), options=OWN_CONNECTION) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as plain:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert plain.value.code() == grpc.StatusCode.UNAVAILABLE


def test_real_process_serves_mutual_tls_and_plaintext_health(
    pki: Pki, sipauth_process: Callable[..., SipauthProcess]
) -> None:
    """`sipauth serve` on 0.0.0.0 with mutual TLS accepts an allowed proxy, denies another, and answers probes."""
    health_port = free_port()
    proc = sipauth_process({"listen": "0.0.0.0:0", "tls": pki.settings(), "health_listen": f"0.0.0.0:{health_port}"})

    async def scenario() -> None:
        verdict = await login_over_new_channel(proc.target, pki.tls())
        assert verdict.verdict == auth_pb2.VERDICT_ACCEPT, verdict.reason
        assert await refusal(proc.target, pki.tls("intruder", dns=["intruder.sip.svc"])) == (
            grpc.StatusCode.PERMISSION_DENIED
        )
        async with grpc.aio.insecure_channel(f"127.0.0.1:{health_port}") as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING

    asyncio.run(scenario())
    assert proc.stop() == 0
    assert "PRIVATE KEY" not in "".join(proc.output)


def test_files_are_checked_at_most_once_per_interval(pki: Pki) -> None:
    """A change on disk is picked up on the first handshake after reload_interval_seconds, not before."""
    now = [1000.0]
    files = CertificateFiles(TlsSettings.model_validate(pki.settings(reload_interval_seconds=10)), lambda: now[0])
    files.load()
    swap_secret(pki.secret, server_files(trustme.CA(), pki.client_ca))
    now[0] += 9
    assert files.fetch() is None
    now[0] += 1
    assert files.fetch() is not None
    assert files.fetch() is None
    now[0] += 10
    assert files.fetch() is None
