"""`leasenet bench`: the benchmark harness of SPEC §8, on one machine, every process separate.

    data path  one echo handler reached three ways by the same load-generator process:
                 direct   client -> a plain grpc.aio server running the handler (one hop)
                 relay    client -> relay -> one bidi stream (the consumer host's tunnel client) ->
                          relay end (echo): the overlay's two extra hops and nothing else
                 overlay  client (a consumer VM) -> consumer host -> tunnel -> producer host -> VM
               in two client styles, each used for all three: `unary` (one Send call per request) and
               `stream` (SendStream, C requests in flight on one stream); C = 1, 16, 64; payloads of
               100 B and 16 KiB; plaintext, and again with mutual TLS on every hop (--tls). Each cell
               runs its targets in short slices, alternating round after round; every ratio is the
               median of the ratios paired within a round, with its 95% interval (report), and the
               overlay run against itself checks that the method reads 1.00 within it.
               The plaintext overlay runs in a cluster of its own (--insecure); the TLS overlay, the
               leasing and the failover phases in the bench's mutual-TLS cluster.
    etcd load  etcd's own counters (/metrics: gRPC messages received) around every plaintext overlay
               slice and around an idle window (the background rate): what traffic adds, per service request.
    leasing    RequestLease latency for a pool of 4 (at the leasing API), and grants/s with 4
               consumer hosts racing for a fleet smaller than the demand; double claims from the
               lease-event watch and the producer VMs' execution history (leasenet.checker).
    scale      (--scale, alone) 10,000 VMs over ten producer hosts, 2,000 pools through two registries:
               whether grants and the request path cost the same at 100 and 10,000 VMs (bench.scale);
               and issue 19's measures of the control plane's design, with their targets in --json
               (bench.scalereport): CPU per grant/release cycle of the hosts party to it and of the
               others, etcd's watch events per grant at 10 and 40 hosts (light hosts that only
               register and watch, `leasenet presence`), the pools' keep-alives beside the hosts',
               grants/s with --grants-in-flight grants in flight, double claims.
    calls      (--calls, alone) whole gRPC calls to a real VM server (examples/notebook): direct, through
               two generic L7 relays, and through the overlay's VIP endpoint; unary and bidi (bench.calls);
               then the VM life cycle: restart-to-ready of a command VM after a reset and after a
               SIGKILL, and grant latency from warm command VMs beside in-process VMs (bench.vmlife).
    failover   SIGKILL of the busiest producer host under traffic: time until every consumer VM is
               served again, and how many requests ended in an error.

One module per job: `plans` (the cluster, the plan of a run, the typed tasks and results the roles
exchange), `measure` (percentiles, CPU and etcd meters), `servers` (the direct baseline and the
bare relay, the generic call relay), `datapath`, `leasing`, `failover`, `calls`, `vmlife` (the measuring roles), `harness` (starts the
processes of each phase), `report` (paired ratios, targets), `render` (the tables), `scale`,
`scalereport` and `watching` (its claim history) (--scale) and `command`
(`leasenet bench`).
The harness's own processes are roles run as `python -m leasenet.bench ROLE` (`__main__`), so an
installed wheel has them all. `--quick` is the CI smoke test: short, and it asserts correctness
and the method's self-check, never speed."""
