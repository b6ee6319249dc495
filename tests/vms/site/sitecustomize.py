"""Test-only shim, until the producer host's `--vm-endpoint` (branch vm-drivers) is merged: a
producer host started with this directory on PYTHONPATH and LEASENET_TEST_VM_ENDPOINTS set
(JSON {vm address: endpoint}) gives its VM actors those endpoints, as a VM driver would."""

import json
import os

_ENDPOINTS = os.environ.get("LEASENET_TEST_VM_ENDPOINTS")
if _ENDPOINTS:
    from producer_host.actors import VmActor

    _by_address = json.loads(_ENDPOINTS)
    _start = VmActor.start

    def start(self, tasks=None):  # type: ignore[no-untyped-def]
        self.endpoint = _by_address.get(self.vm.address)
        return _start(self, tasks)

    VmActor.start = start  # type: ignore[method-assign]

_REFUSING = os.environ.get("LEASENET_TEST_REFUSING")
if _REFUSING:  # these VMs refuse every request as a full queue would, each refusal noted in a file
    from producer_host import limits
    from producer_host.actors import VmActor as _Actor
    from wire.errors import Status

    _refusing, _noted = json.loads(_REFUSING)
    _tell = _Actor.tell

    def tell(self, envelope):  # type: ignore[no-untyped-def]
        if self.vm.address not in _refusing:
            return _tell(self, envelope)
        with open(_noted, "a", encoding="utf-8") as f:
            f.write(f"{self.vm.address}\n")
        return envelope.reply(Status.RESOURCE_EXHAUSTED, limits.vm_queue_full(self.queue_limit), b"", False)

    _Actor.tell = tell  # type: ignore[method-assign]
