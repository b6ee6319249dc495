"""Names and addresses checked at the edges: the cluster config (names, duplicates, subnets,
quotas) and the registry's leasing requests (registry/requests.py), each with a sentence."""

from __future__ import annotations

from pathlib import Path

import pytest

from mapping.config import ClusterConfig, load_cluster_config, parse_cluster_config, to_toml
from mapping.model import LeasePolicy, Network, Quotas, Service
from registry import requests
from wire.errors import InvalidRequest, Status

BLUE = {"name": "blue", "vni": 100}
ECHO = {"name": "echo", "network": "blue", "target": "10.1.255.1:7"}


@pytest.mark.parametrize(("config", "sentence"), [
    ({"networks": [BLUE, {"name": "blue", "vni": 200}]}, "network 'blue' is defined twice"),
    ({"networks": [BLUE], "services": [ECHO, {**ECHO, "target": "10.1.255.2:7"}]}, "service 'echo' is defined twice"),
    ({"networks": [{"name": "bl/ue", "vni": 1}]}, "network name 'bl/ue' may hold only letters"),
    ({"networks": [{"name": "b" * 500, "vni": 1}]}, "network name is 500 characters long; the limit is 63"),
    ({"networks": [BLUE], "services": [{**ECHO, "name": ""}]}, "service name is empty"),
    ({"networks": [{**BLUE, "subnet": "10.1.0.0/33"}]}, "subnet '10.1.0.0/33' is not an IPv4 CIDR"),
    ({"networks": [{**BLUE, "subnet": "10.2.0.0/16"}], "services": [ECHO]},
     r"service 'echo': VIP 10.1.255.1 is not in network 'blue' \(10.2.0.0/16\)"),
    ({"networks": [{**BLUE, "pools_per_network": 0}]}, "quota pools_per_network must be a whole number from 1"),
    ({"quotas": {"pools": 3}}, r"\[quotas\] has unknown field\(s\) \['pools'\]"),
    ({"networks": [{**BLUE, "colour": "blue"}]}, r"network 'blue' has unknown field\(s\) \['colour'\]"),
])
def test_a_bad_cluster_config_is_refused_with_a_sentence(config: dict, sentence: str) -> None:
    with pytest.raises(ValueError, match=sentence):
        parse_cluster_config(config)


def test_quotas_default_for_every_network_and_a_network_may_override_them() -> None:
    config = parse_cluster_config({"quotas": {"pools_per_consumer_vm": 5},
                                   "networks": [BLUE, {"name": "red", "vni": 2, "pools_per_network": 9}]})
    assert config.networks[0].quotas == Quotas(pools_per_consumer_vm=5)
    assert config.networks[1].quotas == Quotas(pools_per_network=9, pools_per_consumer_vm=5)


def test_a_config_with_quotas_and_a_subnet_reads_back_the_same(tmp_path: Path) -> None:
    config = ClusterConfig([Network("blue", 100, Quotas(7, 5, 3), "10.1.0.0/16")],
                           [Service("echo", "blue", "10.1.255.1", 7, LeasePolicy(max_pools_per_consumer=2))])
    path = tmp_path / "cluster.toml"
    path.write_text(to_toml(config))
    assert load_cluster_config(path) == config


def test_a_network_checks_addresses_against_its_subnet() -> None:
    blue = Network("blue", 100, subnet="10.1.0.0/16")
    assert blue.check_address("10.1.2.3") == "10.1.2.3"
    with pytest.raises(ValueError, match="consumer VM 10.9.0.1 is not in network 'blue' \\(10.1.0.0/16\\)"):
        blue.check_address("10.9.0.1", "consumer VM")
    assert Network("red", 1).check_address("192.168.0.1") == "192.168.0.1"  # no subnet: any IPv4 address


@pytest.mark.parametrize(("check", "sentence"), [
    (lambda: requests.name("service", "x" * 500_000), "service is 500000 characters long; the limit is 63"),
    (lambda: requests.name("consumer network", "blue\n"), "consumer network 'blue\\\\n' may hold only"),
    (lambda: requests.address("consumer VM address", "1" * 500_000), "is 500000 characters long"),
    (lambda: requests.address("consumer VM address", "10.1.0.300"), "'10.1.0.300' is not an IPv4 address"),
    (lambda: requests.host_addresses(["127.0.0.1:1"] * 65), "avoid_hosts lists 65 hosts; the limit is 64"),
    (lambda: requests.host_addresses(["a b"]), "'a b', which is not a host:port address"),
    (lambda: requests.vm_ids(["blue"]), "producer VM id 'blue' is not <network>/<address>"),
    (lambda: requests.vm_ids(["blue/10.1.0.x"]), "producer VM address '10.1.0.x' is not an IPv4 address"),
])
def test_a_bad_leasing_request_field_is_invalid_argument_with_a_sentence(check, sentence: str) -> None:
    with pytest.raises(InvalidRequest, match=sentence) as refused:
        check()
    assert refused.value.code == Status.INVALID_ARGUMENT


def test_good_leasing_request_fields_pass_unchanged() -> None:
    assert requests.name("service", "echo-1.v2") == "echo-1.v2"
    assert requests.address("consumer VM address", "10.1.0.1") == "10.1.0.1"
    assert requests.vm_ids(["blue/10.1.1.1"]) == ["blue/10.1.1.1"]
    assert requests.host_addresses(["127.0.0.3:7101"]) == frozenset({"127.0.0.3:7101"})
