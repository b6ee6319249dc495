"""Producer VM drivers: what a producer VM is and who keeps it alive.

Three backends behind one narrow interface (driver.VmDriver: start, wait for exit, stop):
- in-process (the built-in handlers, `--handler echo|kv|work|module:factory`): coroutines in the
  host, always ready, registered in bulk with the host record (thousands of VMs);
- command (`--vm-command`): a process per VM that the host spawns, in its own process group and
  fresh empty working directory, serving its own gRPC server on a private endpoint;
- endpoint (`--vm-endpoint`): a VM something else runs; the host only health-checks it.

A command or endpoint VM has a supervisor (supervisor.VmSupervisor) driving the pure life cycle of
lifecycle.py: registered only once its grpc.health.v1 check answers SERVING, withdrawn at once when
it exits or fails its checks, restarted with backoff and registered again as a new incarnation,
and reset (restarted empty) after a lessee used it."""
