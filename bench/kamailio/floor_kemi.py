"""(b) The offload floor: one blocking gRPC call to the empty handler per REGISTER, through sipauth_client.

The call's answer is ignored: a REGISTER without Authorization gets a fixed
401 challenge, one with it gets 200. What is left is the cost of the call itself.
"""

import os
import site

import KSR

site.addsitedir(os.environ["KAMAILIO_SIPAUTH_PYTHON_PATH"])

from sipauth_client import SipauthClient

_CHALLENGE = 'WWW-Authenticate: Digest realm="example.test", qop="auth", algorithm=MD5, nonce="floor-nonce"\r\n'


def mod_init():
    return Floor()


class Floor:
    def __init__(self):
        self.client = SipauthClient(os.environ["KAMAILIO_SIPAUTH_TARGET"], timeout=2, retries=0)

    def child_init(self, rank):
        return 0

    def ksr_request_route(self, msg):
        if KSR.tmx.t_precheck_trans() > 0:
            KSR.tm.t_check_trans()
            return 1
        if KSR.tm.t_check_trans() == 0:
            return 1
        KSR.tm.t_newtran()
        authorization = KSR.pv.get("$hdr(Authorization)") or ""
        self.client.verify_response(
            authorization=authorization,
            method=KSR.kx.get_method(),
            request_uri=KSR.kx.get_ruri(),
            source_ip=KSR.kx.get_srcip(),
            call_id=KSR.kx.get_callid(),
        )
        if not authorization:
            KSR.hdr.append_to_reply(_CHALLENGE)
            KSR.tm.t_reply(401, "Unauthorized")
            return 1
        KSR.hdr.append_to_reply('Authentication-Info: rspauth="0"\r\n')
        KSR.tm.t_reply(200, "OK")
        return 1

    def ksr_reply_route(self, msg):
        return 1

    def ksr_onsend_route(self, msg):
        return 1
