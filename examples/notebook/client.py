"""A command-line client of the notebook, on the generated stubs only: an unmodified gRPC client,
pointed at a VM's server directly or at a leasenet VIP endpoint alike.

    python -m examples.notebook.client --target unix:///path.sock|HOST:PORT COMMAND ...

Commands: put KEY VALUE | get KEY | scan PREFIX | append KEY=VALUE... | chat LINE... | whoami |
sleep MS | fail CODE [DETAILS]. Each prints one JSON line per answer; a gRPC error prints
`CODE: details` on stderr and exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from examples.notebook import notebook_pb2 as pb
from examples.notebook import notebook_pb2_grpc as pb_grpc


def readable(message: Message) -> dict[str, Any]:
    """MessageToDict's view, with bytes fields as text (not base64) and 64-bit numbers as numbers."""
    shown: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            value = [readable(m) for m in value] if field.is_repeated else readable(value)
        elif field.type == FieldDescriptor.TYPE_BYTES:
            value = value.decode(errors="backslashreplace")
        elif field.is_repeated:
            value = list(value)
        shown[field.name] = value
    return shown


def show(message: Message) -> None:
    print(json.dumps(readable(message)), flush=True)


async def entries(pairs: list[str]) -> AsyncIterator[pb.Entry]:
    for pair in pairs:
        key, _, value = pair.partition("=")
        yield pb.Entry(key=key, value=value.encode())


async def lines(texts: list[str]) -> AsyncIterator[pb.Line]:
    for text in texts:
        yield pb.Line(text=text)


async def run(args: argparse.Namespace) -> None:
    metadata = tuple(tuple(h.split("=", 1)) for h in args.header)
    async with grpc.aio.insecure_channel(args.target) as channel:
        stub = pb_grpc.NotebookStub(channel)
        kw: dict[str, Any] = {"metadata": metadata, "timeout": args.timeout}
        match args.command:
            case "put":
                show(await stub.Put(pb.PutRequest(key=args.key, value=args.value.encode()), **kw))
            case "get":
                show(await stub.Get(pb.GetRequest(key=args.key), **kw))
            case "scan":
                async for entry in stub.Scan(pb.ScanRequest(prefix=args.prefix), **kw):
                    show(entry)
            case "append":
                show(await stub.Append(entries(args.entries), **kw))
            case "chat":
                async for reply in stub.Chat(lines(args.lines), **kw):
                    show(reply)
            case "whoami":
                show(await stub.Whoami(pb.WhoamiRequest(), **kw))
            case "sleep":
                show(await stub.Sleep(pb.SleepRequest(ms=args.ms), **kw))
            case "fail":
                show(await stub.Fail(pb.FailRequest(code=args.code, details=args.details), **kw))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m examples.notebook.client", description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", required=True, help="unix:///path.sock or HOST:PORT")
    parser.add_argument("--timeout", type=float, default=10.0, help="the call's deadline, in seconds")
    parser.add_argument("--header", action="append", default=[], metavar="KEY=VALUE", help="request metadata")
    commands = parser.add_subparsers(dest="command", required=True)
    put = commands.add_parser("put")
    put.add_argument("key")
    put.add_argument("value")
    commands.add_parser("get").add_argument("key")
    commands.add_parser("scan").add_argument("prefix", nargs="?", default="")
    commands.add_parser("append").add_argument("entries", nargs="+", metavar="KEY=VALUE")
    commands.add_parser("chat").add_argument("lines", nargs="+", metavar="LINE")
    commands.add_parser("whoami")
    commands.add_parser("sleep").add_argument("ms", type=int)
    fail = commands.add_parser("fail")
    fail.add_argument("code", type=int)
    fail.add_argument("details", nargs="?", default="")
    args = parser.parse_args(argv)
    try:
        asyncio.run(run(args))
    except grpc.aio.AioRpcError as exc:
        sys.exit(f"{exc.code().name}: {exc.details()}")


if __name__ == "__main__":
    main()
