"""`leasenet bench`: the benchmark harness of SPEC §8, on one machine, every process separate.

    data path  one echo handler reached two ways by the same load-generator process:
                 direct   client -> a plain grpc.aio server running the handler (one hop)
                 overlay  client (a consumer VM) -> consumer host -> tunnel -> producer host -> VM
               in two client styles, each used for both: `unary` (one Send call per request) and
               `stream` (SendStream, C requests in flight on one stream); C = 1, 16, 64; payloads of
               100 B and 16 KiB. Throughput and p50/p99 latency; ratios overlay/direct per run.
               Next to each unary C=1 cell, the floor: a bare relay (two processes adding only the
               overlay's two grpc hops) shows what any overlay of this shape costs over the direct call.
    etcd load  etcd's own counters (/metrics: gRPC messages received) around every overlay cell and
               around an idle window (the background rate): what traffic adds, per service request.
    leasing    RequestLease latency for a pool of 4 (at the leasing API), and grants/s with 4
               consumer hosts racing for a fleet smaller than the demand; double claims from the
               lease-event watch and the producer VMs' execution history (leasenet.checker).
    failover   SIGKILL of the busiest producer host under traffic: time until every consumer VM is
               served again, and how many requests ended in an error.

One module per job: `plans` (the cluster, the plan of a run, the typed tasks and results the roles
exchange), `measure` (percentiles, CPU and etcd meters), `servers` (the direct baseline and the
relay floor), `datapath`, `leasing`, `failover` (the measuring roles), `harness` (starts the
processes of each phase), `report` (summaries, targets, the table) and `command` (`leasenet bench`).
The harness's own processes are roles run as `python -m leasenet.bench ROLE` (`__main__`), so an
installed wheel has them all. `--quick` is the CI smoke test: short, and it asserts correctness
only, never speed."""
