"""The standard grpc.health.v1 check on a VM's own server (kubelet's probes: a start-up probe
gates registration, a liveness probe withdraws)."""

from __future__ import annotations

import asyncio

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from wire.channels import channel


class HealthProbe:
    """One channel per incarnation, made inside the running loop; `check` is one Health/Check."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self._channel = channel(endpoint)
        self._stub = health_pb2_grpc.HealthStub(self._channel)

    async def reachable(self) -> bool:
        """Something accepts connections at the endpoint: asked before the first gRPC check of a
        start-up, since a refused connection puts the channel in reconnect backoff (up to a
        second of restart-to-ready for nothing)."""
        try:
            if self.endpoint.startswith("unix://"):
                _, writer = await asyncio.open_unix_connection(self.endpoint[len("unix://"):])
            else:
                host, _, port = self.endpoint.rpartition(":")
                _, writer = await asyncio.open_connection(host.strip("[]"), int(port))
        except OSError:
            return False
        writer.close()
        return True

    async def check(self, timeout_s: float) -> bool:
        """SERVING for service "" within `timeout_s`; anything else (no answer, NOT_SERVING) is False."""
        try:
            reply = await self._stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout_s,
                                           wait_for_ready=False)
        except grpc.aio.AioRpcError:
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    async def close(self) -> None:
        await self._channel.close()
