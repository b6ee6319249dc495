"""The etcd part of docker/compose.yaml: 3 members form one cluster over mutual TLS (clients and
peers), the one-shot etcd-auth job turns auth on with one role per kind of process, each kind may
write only its own key prefixes, and the cluster keeps serving writes with one member killed,
paused or cut off; `down -v` leaves nothing behind."""

from __future__ import annotations

import json

import pytest

from mapping import keys
from tests.conftest import eventually
from tests.docker.conftest import ETCD_ENDPOINTS, ETCD_MEMBERS, docker

pytestmark = pytest.mark.docker

MEMBERS = ETCD_MEMBERS


def etcdctl(project, via: str, *args: str, endpoints: tuple[str, ...] = MEMBERS, check: bool = True):
    """etcdctl inside the `via` member's container, against the given members, over TLS as root
    (the member's own certificate: ETCDCTL_CACERT/CERT/KEY in compose.yaml; etcdctl is at
    /usr/local/bin in both our image and the official one)."""
    eps = ",".join(f"https://{m}:2379" for m in endpoints)
    return project.exec(via, "etcdctl", f"--endpoints={eps}", "--command-timeout=5s", *args,
                        timeout=30, check=check)


def put_eventually(project, via: str, key: str, value: str, endpoints, timeout: float = 30) -> None:
    # Right after the leader dies a proposal can fail with "request timed out, possibly due
    # to previous leader failure" (~7 s); a client retries, and so do we.
    def put() -> bool:
        proc = etcdctl(project, via, "put", key, value, endpoints=endpoints, check=False)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return True

    eventually(put, timeout, 0.5, f"put {key}")


def get(project, via: str, key: str, endpoints) -> str | None:
    """Value of key, or None if absent or the read failed. Linearizable by default: it
    answers only with a quorum behind the member asked."""
    proc = etcdctl(project, via, "get", key, "--print-value-only", endpoints=endpoints, check=False)
    return proc.stdout.strip() or None if proc.returncode == 0 else None


def status(project, via: str, endpoints=MEMBERS) -> list[dict]:
    return json.loads(etcdctl(project, via, "endpoint", "status", "-w", "json", endpoints=endpoints).stdout)


def leader(project) -> str:
    (lead,) = {s["Endpoint"].removeprefix("https://").split(":")[0] for s in status(project, "etcd1")
               if s["Status"]["leader"] == s["Status"]["header"]["member_id"]}
    return lead


@pytest.fixture
def etcd(compose_project, leasenet_image):  # leasenet_image: also the certificates (build-images.sh)
    project = compose_project()
    project.up(*MEMBERS, timeout=120)
    return project


def test_three_members_form_one_cluster_serving_only_mutual_tls(etcd):
    assert [etcd.health(m) for m in MEMBERS] == ["healthy"] * 3
    members = json.loads(etcdctl(etcd, "etcd2", "member", "list", "-w", "json").stdout)["members"]
    assert sorted(m["name"] for m in members) == list(MEMBERS)
    assert all(url.startswith("https://") for m in members for url in m["peerURLs"] + m["clientURLs"])
    assert not any(m.get("isLearner") for m in members)
    statuses = status(etcd, "etcd3")
    assert len({s["Status"]["header"]["cluster_id"] for s in statuses}) == 1
    assert len({s["Status"]["leader"] for s in statuses}) == 1
    put_eventually(etcd, "etcd1", "k", "v", MEMBERS)
    assert all(get(etcd, m, "k", (m,)) == "v" for m in MEMBERS)

    plaintext = etcd.exec("etcd1", "etcdctl", "--endpoints=http://etcd2:2379", "--command-timeout=3s",
                          "get", "k", check=False, timeout=30)
    assert plaintext.returncode != 0
    # The CA but no client certificate of its own (the official etcd image has no `env`: docker sets it).
    no_certificate = docker("exec", "-e", "ETCDCTL_CERT=", "-e", "ETCDCTL_KEY=", etcd.container("etcd1"), "etcdctl",
                            "--endpoints=https://etcd2:2379", "--command-timeout=3s", "get", "k", check=False)
    assert no_certificate.returncode != 0


def test_auth_lets_each_host_write_only_its_own_records(compose_project, leasenet_image):
    etcd = compose_project()
    etcd.up(*MEMBERS, "etcd-auth", timeout=120)  # etcd-auth: the leasenet image's one-shot job
    # `up` returns once the job has started, not finished: auth, then every identity enrolled
    assert etcd.wait_exit("etcd-auth", timeout=120) == 0, etcd.logs("etcd-auth", tail=5)
    assert "Authentication Status: true" in etcdctl(etcd, "etcd1", "auth", "status").stdout
    kinds = ["leasenet-consumer", "leasenet-operator", "leasenet-producer", "leasenet-registry"]
    hosts = ["leasenet-consumer-consumer1", "leasenet-consumer-consumer2", "leasenet-consumer-consumer3",
             "leasenet-producer-producer", "leasenet-producer-producer1", "leasenet-producer-producer2",
             "leasenet-producer-producer3", "leasenet-producer-notebook1", "leasenet-producer-notebook2"]
    others = ["leasenet-operator-admin", "leasenet-operator-traffic", "leasenet-registry-registry1",
              "leasenet-registry-registry2"]
    assert sorted(etcdctl(etcd, "etcd2", "role", "list").stdout.split()) == sorted(kinds + hosts)  # root's is built in
    assert sorted(etcdctl(etcd, "etcd3", "user", "list").stdout.split()) == sorted(hosts + others + ["root"])

    def put(record_key: str) -> str:
        return f"put:{record_key}"
    p1, p2 = put(keys.PRODUCER_HOSTS + "producer1"), put(keys.PRODUCER_HOSTS + "producer2")
    vm1, vm2 = put(keys.VMS + "producer1/blue/10.1.1.1"), put(keys.VMS + "producer2/blue/10.1.2.1")
    c1, c2 = put(keys.CONSUMER_HOSTS + "consumer1"), put(keys.CONSUMER_HOSTS + "consumer2")
    replica, replica_vm = put(keys.PRODUCER_HOSTS + "producer.4f2a"), put(keys.VMS + "producer.4f2a/blue/10.9.0.1")
    claims, registry, outside = put(f"{keys.CLAIMS}probe"), put(keys.REGISTRIES + "registry1"), "put:/elsewhere"
    assert etcd.probe("producer1", "etcd", "producer/producer1", ETCD_ENDPOINTS, p1, vm1, p2, vm2, replica, c1, claims,
                      outside) == {p1: "ok", vm1: "ok", p2: "denied", vm2: "denied", replica: "denied", c1: "denied",
                                   claims: "denied", outside: "denied"}
    # the scalable service's replicas share producer/producer: host ids producer.<container>, nothing else
    assert etcd.probe("producer", "etcd", "producer/producer", ETCD_ENDPOINTS, replica, replica_vm, p1, vm1) == {
        replica: "ok", replica_vm: "ok", p1: "denied", vm1: "denied"}
    assert etcd.probe("registry1", "etcd", "registry/registry1", ETCD_ENDPOINTS, p1, vm1, claims, registry) == {
        p1: "denied", vm1: "denied", claims: "ok", registry: "ok"}
    # a host reads the shared prefixes and its own share only (issue 19): the claims are producer hosts'
    read, own, other = f"get:{keys.CLAIMS}probe", f"get:{keys.POOLS}consumer1/", f"get:{keys.POOLS}consumer2/"
    shared = f"get:{keys.PRODUCER_HOSTS}producer1"
    assert etcd.probe("consumer1", "etcd", "consumer/consumer1", ETCD_ENDPOINTS, c1, c2, p1, claims, read, own,
                      other, shared) == {c1: "ok", c2: "denied", p1: "denied", claims: "denied", read: "denied",
                                         own: "ok", other: "denied", shared: "ok"}


def test_writes_survive_killing_the_leader(etcd):
    victim = leader(etcd)  # the harder case: a new election has to happen
    rest = tuple(m for m in MEMBERS if m != victim)
    etcd.kill(victim)
    assert etcd.state(victim)["Status"] == "exited"

    put_eventually(etcd, rest[0], "after-kill", "1", rest)
    assert get(etcd, rest[1], "after-kill", (rest[1],)) == "1"
    assert leader_among(etcd, rest)

    # Same container, same volume: it rejoins and catches up.
    etcd.start(victim)
    etcd.wait_healthy(victim, timeout=60)
    assert get(etcd, victim, "after-kill", (victim,)) == "1"


def leader_among(project, members) -> bool:
    statuses = status(project, members[0], endpoints=members)
    return any(s["Status"]["leader"] == s["Status"]["header"]["member_id"] for s in statuses)


def test_writes_survive_a_paused_and_a_partitioned_member(etcd):
    etcd.pause("etcd1")
    put_eventually(etcd, "etcd2", "paused", "1", ("etcd2", "etcd3"))
    etcd.unpause("etcd1")
    etcd.wait_healthy("etcd1", timeout=60)
    assert get(etcd, "etcd1", "paused", ("etcd1",)) == "1"

    etcd.disconnect("etcd3")
    # Cut off from the majority it can no longer answer a quorum read.
    assert etcdctl(etcd, "etcd3", "endpoint", "health", endpoints=("etcd3",), check=False).returncode != 0
    put_eventually(etcd, "etcd1", "partitioned", "1", ("etcd1", "etcd2"))
    etcd.connect("etcd3")
    etcd.wait_healthy("etcd3", timeout=60)
    eventually(lambda: get(etcd, "etcd3", "partitioned", ("etcd3",)) == "1", 30, 0.5,
               "etcd3 caught up after reconnect")


def test_down_leaves_nothing(compose_project, leasenet_image):
    project = compose_project()
    project.up(*MEMBERS, timeout=120)
    left = project.leftovers()
    assert len(left["containers"]) == 3 and left["networks"] and left["volumes"]
    project.down()
    assert project.leftovers() == {}
