"""Domain records <-> wire.v1 (proto package leasenet.v1) messages. The only registry module that knows protobuf types."""

from __future__ import annotations

from wire.v1 import registry_pb2 as pb
from registry.leasing import LeaseView
from mapping.model import Host, ProducerVm, Service, lease_hex
from mapping.state import ClusterState


def host_to_pb(host: Host) -> pb.Host:
    return pb.Host(host_id=host.host_id, kind=host.kind.value, address=host.address, draining=host.draining,
                   revision=host.revision, version=host.version)


def vm_to_pb(state: ClusterState, vm: ProducerVm) -> pb.ProducerVm:
    claim = state.claims.get(vm.vm_id)
    return pb.ProducerVm(vm_id=vm.vm_id, network=vm.network, address=vm.address, host_id=vm.host_id,
                         service=vm.service, handler=vm.handler,
                         lease_id=lease_hex(claim.lease_id) if claim else "",
                         leased_to=claim.consumer_vm if claim else "", revision=vm.revision, used=vm.used)


def service_to_pb(state: ClusterState, service: Service) -> pb.Service:
    network = state.networks.get(service.network)
    p = service.policy
    return pb.Service(
        name=service.name, network=service.network, vni=network.vni if network else 0, target=service.target,
        policy=pb.LeasePolicy(min_pool=p.min_pool, max_pool=p.max_pool, lease_ttl_s=p.lease_ttl_s,
                              idle_release_s=p.idle_release_s, max_pools_per_consumer=p.max_pools_per_consumer),
        vms=len(state.vms_by_service.get(service.name, ())), free_vms=state.free_count(service.name))


def lease_to_pb(view: LeaseView, fencing_tokens: bool = True) -> pb.Lease:
    """`fencing_tokens`: False leaves them 0, for callers who have no use for them (registry/authz.py)."""
    pool = view.pool
    network, _, address = pool.consumer_vm.partition("/")
    return pb.Lease(
        lease_id=lease_hex(pool.lease_id), service=pool.service, consumer_network=network, consumer_vm=address,
        consumer_host=pool.consumer_host, ttl_s=pool.ttl_s, revision=pool.revision,
        members=[pb.PoolMember(vm_id=m.vm.vm_id, network=m.vm.network, address=m.vm.address, host_id=m.vm.host_id,
                               host_address=m.host_address,
                               fencing_token=m.fencing_token if fencing_tokens else 0) for m in view.members])
