"""The consumer host's configuration file: the consumer VMs attached to it, each with its token.

    [[vms]]
    network = "blue"
    address = "10.1.0.1"
    token = "s3cret-1"
"""

from __future__ import annotations

from pathlib import Path

from consumer_host.datapath import Attachment
from mapping.config import read_toml
from mapping.model import VmId, parse_ipv4


def load_attachments(path: str | Path) -> dict[VmId, Attachment]:
    data = read_toml(path, "consumer host config")
    attachments: dict[VmId, Attachment] = {}
    for i, vm in enumerate(data.get("vms", [])):
        try:
            a = Attachment(str(vm["network"]), parse_ipv4(str(vm["address"]), "consumer VM address"), str(vm["token"]))
        except KeyError as exc:
            raise ValueError(f"{path}: vms[{i}] is missing {exc.args[0]!r}") from None
        except ValueError as exc:
            raise ValueError(f"{path}: vms[{i}]: {exc}") from None
        if not a.token:
            raise ValueError(f"{path}: consumer VM {a.vm_id} has an empty token")
        attachments[a.vm_id] = a
    return attachments
