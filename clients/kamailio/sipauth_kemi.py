"""Kamailio app_python3 (KEMI) routing: every request that can be challenged is authenticated by sipauth.

Loaded by kamailio.cfg (``modparam("app_python3", "load", ...)``). Settings
come from the ``#!define`` names of kamailio.cfg (or ``kamailio -A``), and
``KAMAILIO_<NAME>`` environment variables override them; see
docs/integrating-a-proxy.md.

Per request:

1. Retransmissions are absorbed by tm (``t_check_trans``): the check runs
   once per transaction, and the last reply is resent.
2. ACK and CANCEL are never challenged (RFC 3261 section 22.1): ACK follows
   its dialog or transaction, CANCEL its INVITE's transaction.
3. Every other request creates its transaction, then one call to sipauth
   (``SipauthClient.authorize``) decides: reply (401/407 with the challenge,
   400, 403, or 503/500 with Retry-After when sipauth cannot answer), or go on.
4. On success the consumed credentials are removed, Authentication-Info is
   added to the 2xx, and the request is registered (REGISTER), answered
   (OPTIONS to this proxy) or relayed statefully (everything else).
"""

from __future__ import annotations

import os
import site
from pathlib import Path

import KSR  # provided by app_python3 inside Kamailio

_DEFAULTS = {
    "SIPAUTH_TARGET": "127.0.0.1:50051",
    "SIPAUTH_REALM": "",
    "SIPAUTH_TIMEOUT": "0.5",
    "SIPAUTH_RETRIES": "1",
    "SIPAUTH_BACKOFF": "0.05",
    "SIPAUTH_RETRY_AFTER": "5",
    # Requests without credentials are answered from a pool of challenges fetched this many at a
    # time, where sipauth allows it (no per-request nonce binding): one call per SIP transaction
    # pair instead of two. 0: ask sipauth for every challenge.
    "SIPAUTH_CHALLENGE_BATCH": "32",
    # exchange: each worker's calls are messages on one Exchange stream (a fraction of the CPU a
    # unary gRPC call costs the worker); unary: one grpcio call each.
    "SIPAUTH_TRANSPORT": "exchange",
    "SIPAUTH_TLS_CA": "",
    "SIPAUTH_TLS_CERT": "",
    "SIPAUTH_TLS_KEY": "",
    "SIPAUTH_TLS_SERVER_NAME": "",
    "SIPAUTH_PYTHON_PATH": "",
}
# REGISTER is answered by this registrar (401); everything else is proxied (407).
_REGISTRAR_METHODS = frozenset({"REGISTER"})
# The credentials header and its $hdrc spec, by proxy flag: built once, not per request.
_CREDENTIALS = {
    proxy: (name, f"$hdrc({name})") for proxy, name in ((False, "Authorization"), (True, "Proxy-Authorization"))
}
_INFO_AVP = "$avp(sipauth_info)"
_USER_AVP = "$avp(sipauth_user)"


def setting(name: str) -> str:
    """KAMAILIO_<name> from the environment, else the #!define in kamailio.cfg, else the default."""
    value = os.environ.get(f"KAMAILIO_{name}")
    if value is None:
        defined = KSR.kx.get_def(name) if KSR.kx.ifdef(name) > 0 else None
        value = _DEFAULTS[name] if defined is None else str(defined)
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    return value


# Kamailio's Python ignores virtualenvs: the client and grpcio come from this site-packages directory.
# addsitedir, not sys.path: it also reads .pth files (editable installs).
if setting("SIPAUTH_PYTHON_PATH"):
    site.addsitedir(setting("SIPAUTH_PYTHON_PATH"))

from sipauth_client import ClientOptions, ProxyDecision, ProxyRequest, SipauthClient, TlsConfig  # noqa: E402


def _tls() -> TlsConfig | None:
    ca, cert, key = setting("SIPAUTH_TLS_CA"), setting("SIPAUTH_TLS_CERT"), setting("SIPAUTH_TLS_KEY")
    if not (ca or cert):
        return None
    return TlsConfig(
        ca_file=Path(ca) if ca else None,
        cert_file=Path(cert) if cert else None,
        key_file=Path(key) if key else None,
        server_name=setting("SIPAUTH_TLS_SERVER_NAME") or None,
    )


def mod_init() -> SipauthRouting:
    """Called once by app_python3 in the main process, before the workers fork."""
    return SipauthRouting()


class SipauthRouting:
    """The request routes; one instance, inherited by every worker."""

    def __init__(self) -> None:
        options = ClientOptions(
            timeout=float(setting("SIPAUTH_TIMEOUT")),
            retries=int(setting("SIPAUTH_RETRIES")),
            backoff=float(setting("SIPAUTH_BACKOFF")),
            tls=_tls(),
            challenge_batch=int(setting("SIPAUTH_CHALLENGE_BATCH")),
            transport=setting("SIPAUTH_TRANSPORT"),
        )
        # No channel yet: each worker opens its own on its first request (the client checks the pid).
        self.client = SipauthClient(setting("SIPAUTH_TARGET"), options)
        self.realm = setting("SIPAUTH_REALM")
        self.retry_after = int(setting("SIPAUTH_RETRY_AFTER"))
        KSR.info(
            f"sipauth: target {self.client.target} realm {self.realm or '(default)'} "
            f"timeout {options.timeout}s retries {options.retries} tls {options.tls is not None} "
            f"transport {options.transport}\n"
        )

    def child_init(self, rank: int) -> int:
        """Per-worker start; the connection to sipauth is opened on the first request instead."""
        return 0

    # -- routes --------------------------------------------------------------

    def ksr_request_route(self, msg: object) -> int:
        """Entry point for every request."""
        if KSR.maxfwd.process_maxfwd(10) < 0:
            KSR.sl.send_reply(483, "Too Many Hops")
            return 1
        if KSR.sanity.sanity_check(1511, 7) < 0:
            return 1
        method = KSR.kx.get_method()
        # Kamailio matches method names case-insensitively (as KSR.is_CANCEL() and the like do):
        # one call for the name instead of one per method test.
        kind = method.upper()
        if kind == "CANCEL":
            self._cancel()
            return 1
        if kind == "ACK":
            self._ack()
            return 1
        # A retransmission of a request still being processed, or already answered: tm handles it.
        if KSR.tmx.t_precheck_trans() > 0:
            KSR.tm.t_check_trans()
            return 1
        if KSR.tm.t_check_trans() == 0:
            return 1
        KSR.tm.t_newtran()
        register = kind == "REGISTER"
        if not self._authorized(method, register):
            return 1
        if register:
            self._register()
        else:
            self._relay()
        return 1

    def ksr_onreply_sipauth(self, msg: object) -> int:
        """On a 2xx to an authenticated request: add Authentication-Info (mutual authentication)."""
        status = KSR.kx.get_status()
        info = KSR.pv.get(_INFO_AVP)
        if 200 <= status < 300 and info:
            KSR.hdr.append(f"{info}\r\n")
        return 1

    def ksr_reply_route(self, msg: object) -> int:
        """Every reply received: nothing to do (tm routes it)."""
        return 1

    def ksr_onsend_route(self, msg: object) -> int:
        """Every message sent: nothing to do (app_python3 calls it when tm forwards)."""
        return 1

    # -- steps ---------------------------------------------------------------

    def _authorized(self, method: str, register: bool) -> bool:
        """Ask sipauth; on anything but acceptance, reply (statefully) and return False."""
        proxy = method not in _REGISTRAR_METHODS
        header, count_spec = _CREDENTIALS[proxy]
        count = KSR.pv.get(count_spec) or 0
        if not count:
            # No credentials: the challenge comes from the pool when it holds one, and the request's
            # other fields are not even read (every first request of every transaction takes this path).
            pooled = self.client.pooled_challenge(realm=self.realm, proxy=proxy)
            if pooled is not None:
                KSR.dbg(f"sipauth: {method}: {pooled.status_code} from the pool\n")
                self._reply(pooled)
                return False
        credentials = [KSR.pv.get(f"$(hdr({header})[{index}])") or "" for index in range(count)] if count else []
        body = KSR.kx.get_body() if KSR.kx.get_bodylen() > 0 else ""
        request = ProxyRequest(
            method=method,
            request_uri=KSR.kx.get_ruri(),
            authorization=credentials,
            body=body.encode("utf-8", "surrogateescape"),
            source_ip=KSR.kx.get_srcip(),
            call_id=KSR.kx.get_callid(),
            realm=self.realm,
            proxy=proxy,
        )
        decision = self.client.authorize(request, retry_after=self.retry_after)
        if not decision.forward:
            # A challenge is the common case (every first request): not worth a log line each.
            log = KSR.err if decision.fault else KSR.dbg if decision.reason == "credentials_missing" else KSR.info
            log(
                f"sipauth: {method} {request.call_id} from {request.source_ip}: {decision.status_code} "
                f"{decision.verdict or 'fault'} {decision.reason}\n"
            )
            self._reply(decision)
            return False
        if decision.consumed is not None:
            self._strip(decision.consumed[0], decision.consumed[1], credentials)
        for name, value in decision.response_headers:
            if register:
                KSR.hdr.append_to_reply(f"{name}: {value}\r\n")
            else:
                KSR.pv.sets(_INFO_AVP, f"{name}: {value}")
                KSR.tm.t_on_reply("ksr_onreply_sipauth")
        if decision.username:
            KSR.pv.sets(_USER_AVP, decision.username)
        return True

    @staticmethod
    def _reply(decision: ProxyDecision) -> None:
        """Answer the request (statefully) as ``decision`` says."""
        for name, value in decision.headers:
            KSR.hdr.append_to_reply(f"{name}: {value}\r\n")
        KSR.tm.t_reply(decision.status_code, decision.reason_phrase)

    @staticmethod
    def _strip(header: str, consumed: str, values: list[str]) -> None:
        """Remove the credentials for this realm; those for other realms travel on (RFC 3261 section 22.3)."""
        KSR.hdr.remove(header)
        for value in values:
            if value and value != consumed:
                KSR.hdr.append(f"{header}: {value}\r\n")

    def _register(self) -> None:
        """Save the binding, only for the authenticated user's own address of record."""
        if KSR.kx.get_tuser() != KSR.pv.get(_USER_AVP):
            KSR.tm.t_reply(403, "Forbidden")
            return
        if KSR.registrar.save("location", 0) < 0:
            KSR.tm.t_reply(500, "Server Internal Error")

    def _relay(self) -> None:
        """Route an authenticated request: in dialog along its route set, else to its Request-URI."""
        if KSR.siputils.has_totag() > 0:
            if KSR.rr.loose_route() > 0:
                KSR.tm.t_relay()
            else:
                KSR.tm.t_reply(404, "Not here")
            return
        KSR.hdr.remove("Route")
        # Stay on the path of the dialog this request may create, so in-dialog requests are checked too.
        KSR.rr.record_route()
        if self._local_uri():
            if KSR.kx.get_ruser() == "":
                # Addressed to this proxy itself (OPTIONS keepalive and the like).
                KSR.tm.t_reply(200, "OK")
                return
            if KSR.registrar.lookup("location") < 0:
                KSR.tm.t_reply(404, "Not Found")
                return
        if KSR.tm.t_relay() < 0:
            KSR.tm.t_reply(500, "Server Internal Error")

    def _local_uri(self) -> bool:
        host = KSR.kx.get_rhost()
        return bool(KSR.is_myself_ruri() > 0 or (self.realm and host == self.realm))

    @staticmethod
    def _cancel() -> None:
        """CANCEL follows its INVITE's transaction; it is never challenged."""
        if KSR.tm.t_check_trans() > 0:
            KSR.tm.t_relay()
        else:
            KSR.sl.send_reply(481, "Call/Transaction Does Not Exist")

    @staticmethod
    def _ack() -> None:
        """ACK is never challenged: a 2xx ACK follows the dialog, a non-2xx ACK its transaction."""
        if KSR.siputils.has_totag() > 0 and KSR.rr.loose_route() > 0:
            KSR.tm.t_relay()
            return
        if KSR.tm.t_check_trans() > 0:
            KSR.tm.t_relay()
