"""The baseline: sipauth's gRPC server setup with handlers that do nothing.

Same options (``sipauth.app.server_options``), same event loop (uvloop), same
service, request decoding and response encoding, health and reflection; each
handler returns a default response. What sipauth costs above this is what
its own code costs.

``python -m bench.empty_server [--port P] [--workers-reuse-port]`` prints
``listening on 127.0.0.1:PORT`` once it serves.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import grpc
import uvloop
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from sipauth.app import HEALTH_SERVICE_NAME, server_options
from sipauth.config import Settings
from sipauth.server import SERVICE_NAME
from sipauth_client.v1 import auth_pb2

_CHALLENGE = auth_pb2.IssueChallengeResponse()
_VERDICT = auth_pb2.VerifyResponseResponse()


async def issue_challenge(request: auth_pb2.IssueChallengeRequest, context: grpc.aio.ServicerContext):
    return _CHALLENGE


async def verify_response(request: auth_pb2.VerifyResponseRequest, context: grpc.aio.ServicerContext):
    return _VERDICT


def handler() -> grpc.GenericRpcHandler:
    return grpc.method_handlers_generic_handler(
        SERVICE_NAME,
        {
            "IssueChallenge": grpc.unary_unary_rpc_method_handler(
                issue_challenge,
                request_deserializer=auth_pb2.IssueChallengeRequest.FromString,
                response_serializer=auth_pb2.IssueChallengeResponse.SerializeToString,
            ),
            "VerifyResponse": grpc.unary_unary_rpc_method_handler(
                verify_response,
                request_deserializer=auth_pb2.VerifyResponseRequest.FromString,
                response_serializer=auth_pb2.VerifyResponseResponse.SerializeToString,
            ),
        },
    )


async def serve(port: int) -> None:
    server = grpc.aio.server(options=server_options(Settings(), reuse_port=False))
    server.add_generic_rpc_handlers((handler(),))
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection((SERVICE_NAME, reflection.SERVICE_NAME, HEALTH_SERVICE_NAME), server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    print(f"listening on 127.0.0.1:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    uvloop.run(serve(args.port))


if __name__ == "__main__":
    main()
