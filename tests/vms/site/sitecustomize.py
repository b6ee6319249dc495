"""Test-only shim: a producer host started with this directory on PYTHONPATH and
LEASENET_TEST_REFUSING set (JSON [[vm addresses], notes file]) has those VMs refuse every request
and call as a full queue would (a refusal before delivery, which the consumer host retries on
another VM), each refusal noted in the file."""

import json
import os

_REFUSING = os.environ.get("LEASENET_TEST_REFUSING")
if _REFUSING:
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
