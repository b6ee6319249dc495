"""The notebook workload's record of a call (examples/notebook/workload.py): a streamed answer cut
midway says how much of it came, which is what tells a call leasenet may run again (nothing came
back yet) from one it must answer "delivery unknown" (SPEC §6), idempotent or not."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import grpc.aio

from examples.notebook import notebook_pb2 as pb
from examples.notebook import notebook_pb2_grpc as pb_grpc
from examples.notebook.workload import ConsumerVm, Recorder

CUT = "delivery unknown: the tunnel broke after request 7 was sent"


class CutScans(pb_grpc.NotebookServicer):
    """Answers a round's calls; a Scan breaks off after two entries, as when its VM is killed."""

    async def Whoami(self, request: pb.WhoamiRequest, context: grpc.aio.ServicerContext) -> pb.WhoamiReply:
        return pb.WhoamiReply(vm_id="vm-1", pid=1)

    async def Put(self, request: pb.PutRequest, context: grpc.aio.ServicerContext) -> pb.PutReply:
        return pb.PutReply()

    async def Get(self, request: pb.GetRequest, context: grpc.aio.ServicerContext) -> pb.GetReply:
        return pb.GetReply(found=True, value=b"10.1.0.5-0")

    async def Sleep(self, request: pb.SleepRequest, context: grpc.aio.ServicerContext) -> pb.SleepReply:
        return pb.SleepReply()

    async def Scan(self, request: pb.ScanRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[pb.Entry]:
        yield pb.Entry(key="round-0")
        yield pb.Entry(key="round-1")
        await context.abort(grpc.StatusCode.UNAVAILABLE, CUT)

    async def Append(self, requests: AsyncIterator[pb.Entry], context: grpc.aio.ServicerContext) -> pb.AppendReply:
        return pb.AppendReply(appended=len([e async for e in requests]))

    async def Chat(self, requests: AsyncIterator[pb.Line], context: grpc.aio.ServicerContext) -> AsyncIterator[pb.LineReply]:
        async for line in requests:
            yield pb.LineReply(seen=1, text=line.text)


async def test_a_streamed_answer_cut_midway_is_recorded_with_the_messages_that_came(tmp_path: Path) -> None:
    server = grpc.aio.server()
    pb_grpc.add_NotebookServicer_to_server(CutScans(), server)
    target = f"unix://{tmp_path / 'vip.sock'}"
    assert server.add_insecure_port(target)
    await server.start()
    try:
        recorder = Recorder()
        vm = ConsumerVm("10.1.0.5", target, recorder)
        async with grpc.aio.insecure_channel(target) as channel:
            await vm.round(pb_grpc.NotebookStub(channel), 0)
    finally:
        await server.stop(None)
    by_method = {line["method"]: line for line in recorder.lines}
    assert (by_method["Scan"]["code"], by_method["Scan"]["details"], by_method["Scan"]["received"]) == (
        "UNAVAILABLE", CUT, 2)
    assert (by_method["Chat"]["code"], by_method["Chat"]["received"]) == ("OK", 3)
    assert all("received" not in by_method[m] for m in ("Whoami", "Put", "Get", "Sleep", "Append"))
