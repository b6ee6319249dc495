from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Host(_message.Message):
    __slots__ = ("host_id", "kind", "address", "draining", "revision", "version")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    kind: str
    address: str
    draining: bool
    revision: int
    version: str
    def __init__(self, host_id: _Optional[str] = ..., kind: _Optional[str] = ..., address: _Optional[str] = ..., draining: _Optional[bool] = ..., revision: _Optional[int] = ..., version: _Optional[str] = ...) -> None: ...

class ProducerVm(_message.Message):
    __slots__ = ("vm_id", "network", "address", "host_id", "service", "handler", "lease_id", "leased_to", "revision", "used")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    HANDLER_FIELD_NUMBER: _ClassVar[int]
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    LEASED_TO_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    USED_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    network: str
    address: str
    host_id: str
    service: str
    handler: str
    lease_id: str
    leased_to: str
    revision: int
    used: bool
    def __init__(self, vm_id: _Optional[str] = ..., network: _Optional[str] = ..., address: _Optional[str] = ..., host_id: _Optional[str] = ..., service: _Optional[str] = ..., handler: _Optional[str] = ..., lease_id: _Optional[str] = ..., leased_to: _Optional[str] = ..., revision: _Optional[int] = ..., used: _Optional[bool] = ...) -> None: ...

class LeasePolicy(_message.Message):
    __slots__ = ("min_pool", "max_pool", "lease_ttl_s", "idle_release_s", "max_pools_per_consumer")
    MIN_POOL_FIELD_NUMBER: _ClassVar[int]
    MAX_POOL_FIELD_NUMBER: _ClassVar[int]
    LEASE_TTL_S_FIELD_NUMBER: _ClassVar[int]
    IDLE_RELEASE_S_FIELD_NUMBER: _ClassVar[int]
    MAX_POOLS_PER_CONSUMER_FIELD_NUMBER: _ClassVar[int]
    min_pool: int
    max_pool: int
    lease_ttl_s: int
    idle_release_s: float
    max_pools_per_consumer: int
    def __init__(self, min_pool: _Optional[int] = ..., max_pool: _Optional[int] = ..., lease_ttl_s: _Optional[int] = ..., idle_release_s: _Optional[float] = ..., max_pools_per_consumer: _Optional[int] = ...) -> None: ...

class Service(_message.Message):
    __slots__ = ("name", "network", "vni", "target", "policy", "vms", "free_vms")
    NAME_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    VNI_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    VMS_FIELD_NUMBER: _ClassVar[int]
    FREE_VMS_FIELD_NUMBER: _ClassVar[int]
    name: str
    network: str
    vni: int
    target: str
    policy: LeasePolicy
    vms: int
    free_vms: int
    def __init__(self, name: _Optional[str] = ..., network: _Optional[str] = ..., vni: _Optional[int] = ..., target: _Optional[str] = ..., policy: _Optional[_Union[LeasePolicy, _Mapping]] = ..., vms: _Optional[int] = ..., free_vms: _Optional[int] = ...) -> None: ...

class PoolMember(_message.Message):
    __slots__ = ("vm_id", "network", "address", "host_id", "host_address", "fencing_token")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    FENCING_TOKEN_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    network: str
    address: str
    host_id: str
    host_address: str
    fencing_token: int
    def __init__(self, vm_id: _Optional[str] = ..., network: _Optional[str] = ..., address: _Optional[str] = ..., host_id: _Optional[str] = ..., host_address: _Optional[str] = ..., fencing_token: _Optional[int] = ...) -> None: ...

class Lease(_message.Message):
    __slots__ = ("lease_id", "service", "consumer_network", "consumer_vm", "consumer_host", "members", "ttl_s", "revision")
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_NETWORK_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_VM_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_HOST_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    TTL_S_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    service: str
    consumer_network: str
    consumer_vm: str
    consumer_host: str
    members: _containers.RepeatedCompositeFieldContainer[PoolMember]
    ttl_s: int
    revision: int
    def __init__(self, lease_id: _Optional[str] = ..., service: _Optional[str] = ..., consumer_network: _Optional[str] = ..., consumer_vm: _Optional[str] = ..., consumer_host: _Optional[str] = ..., members: _Optional[_Iterable[_Union[PoolMember, _Mapping]]] = ..., ttl_s: _Optional[int] = ..., revision: _Optional[int] = ...) -> None: ...

class RequestLeaseRequest(_message.Message):
    __slots__ = ("service", "consumer_network", "consumer_vm", "consumer_host", "avoid_hosts")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_NETWORK_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_VM_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_HOST_FIELD_NUMBER: _ClassVar[int]
    AVOID_HOSTS_FIELD_NUMBER: _ClassVar[int]
    service: str
    consumer_network: str
    consumer_vm: str
    consumer_host: str
    avoid_hosts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, service: _Optional[str] = ..., consumer_network: _Optional[str] = ..., consumer_vm: _Optional[str] = ..., consumer_host: _Optional[str] = ..., avoid_hosts: _Optional[_Iterable[str]] = ...) -> None: ...

class GrowLeaseRequest(_message.Message):
    __slots__ = ("lease_id", "count", "min_revision", "avoid_hosts")
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    MIN_REVISION_FIELD_NUMBER: _ClassVar[int]
    AVOID_HOSTS_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    count: int
    min_revision: int
    avoid_hosts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, lease_id: _Optional[str] = ..., count: _Optional[int] = ..., min_revision: _Optional[int] = ..., avoid_hosts: _Optional[_Iterable[str]] = ...) -> None: ...

class ShrinkLeaseRequest(_message.Message):
    __slots__ = ("lease_id", "vm_ids")
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    VM_IDS_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    vm_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, lease_id: _Optional[str] = ..., vm_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class LeaseRef(_message.Message):
    __slots__ = ("lease_id",)
    LEASE_ID_FIELD_NUMBER: _ClassVar[int]
    lease_id: str
    def __init__(self, lease_id: _Optional[str] = ...) -> None: ...

class RenewLeaseResponse(_message.Message):
    __slots__ = ("ttl_s",)
    TTL_S_FIELD_NUMBER: _ClassVar[int]
    ttl_s: int
    def __init__(self, ttl_s: _Optional[int] = ...) -> None: ...

class ReleaseLeaseResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class LeasingCall(_message.Message):
    __slots__ = ("id", "timeout_ms", "request", "grow", "shrink", "renew", "release")
    ID_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    GROW_FIELD_NUMBER: _ClassVar[int]
    SHRINK_FIELD_NUMBER: _ClassVar[int]
    RENEW_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    id: int
    timeout_ms: int
    request: RequestLeaseRequest
    grow: GrowLeaseRequest
    shrink: ShrinkLeaseRequest
    renew: LeaseRef
    release: LeaseRef
    def __init__(self, id: _Optional[int] = ..., timeout_ms: _Optional[int] = ..., request: _Optional[_Union[RequestLeaseRequest, _Mapping]] = ..., grow: _Optional[_Union[GrowLeaseRequest, _Mapping]] = ..., shrink: _Optional[_Union[ShrinkLeaseRequest, _Mapping]] = ..., renew: _Optional[_Union[LeaseRef, _Mapping]] = ..., release: _Optional[_Union[LeaseRef, _Mapping]] = ...) -> None: ...

class LeasingAnswer(_message.Message):
    __slots__ = ("id", "lease", "renewed", "released", "error")
    ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    RENEWED_FIELD_NUMBER: _ClassVar[int]
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    id: int
    lease: Lease
    renewed: RenewLeaseResponse
    released: ReleaseLeaseResponse
    error: CallError
    def __init__(self, id: _Optional[int] = ..., lease: _Optional[_Union[Lease, _Mapping]] = ..., renewed: _Optional[_Union[RenewLeaseResponse, _Mapping]] = ..., released: _Optional[_Union[ReleaseLeaseResponse, _Mapping]] = ..., error: _Optional[_Union[CallError, _Mapping]] = ...) -> None: ...

class CallError(_message.Message):
    __slots__ = ("code", "message", "error_type")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ERROR_TYPE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    error_type: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., error_type: _Optional[str] = ...) -> None: ...

class ListHostsRequest(_message.Message):
    __slots__ = ("kind", "page_size", "page_token")
    KIND_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    kind: str
    page_size: int
    page_token: str
    def __init__(self, kind: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListHostsResponse(_message.Message):
    __slots__ = ("hosts", "next_page_token")
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    hosts: _containers.RepeatedCompositeFieldContainer[Host]
    next_page_token: str
    def __init__(self, hosts: _Optional[_Iterable[_Union[Host, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListVmsRequest(_message.Message):
    __slots__ = ("service", "host_id", "free_only", "page_size", "page_token")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    FREE_ONLY_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    service: str
    host_id: str
    free_only: bool
    page_size: int
    page_token: str
    def __init__(self, service: _Optional[str] = ..., host_id: _Optional[str] = ..., free_only: _Optional[bool] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListVmsResponse(_message.Message):
    __slots__ = ("vms", "next_page_token")
    VMS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    vms: _containers.RepeatedCompositeFieldContainer[ProducerVm]
    next_page_token: str
    def __init__(self, vms: _Optional[_Iterable[_Union[ProducerVm, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListServicesRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListServicesResponse(_message.Message):
    __slots__ = ("services", "next_page_token")
    SERVICES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    services: _containers.RepeatedCompositeFieldContainer[Service]
    next_page_token: str
    def __init__(self, services: _Optional[_Iterable[_Union[Service, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class ListLeasesRequest(_message.Message):
    __slots__ = ("service", "consumer_vm", "consumer_host", "producer_host", "page_size", "page_token")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_VM_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_HOST_FIELD_NUMBER: _ClassVar[int]
    PRODUCER_HOST_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    service: str
    consumer_vm: str
    consumer_host: str
    producer_host: str
    page_size: int
    page_token: str
    def __init__(self, service: _Optional[str] = ..., consumer_vm: _Optional[str] = ..., consumer_host: _Optional[str] = ..., producer_host: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListLeasesResponse(_message.Message):
    __slots__ = ("leases", "revision", "next_page_token")
    LEASES_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    leases: _containers.RepeatedCompositeFieldContainer[Lease]
    revision: int
    next_page_token: str
    def __init__(self, leases: _Optional[_Iterable[_Union[Lease, _Mapping]]] = ..., revision: _Optional[int] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class WatchLeasesRequest(_message.Message):
    __slots__ = ("service",)
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    service: str
    def __init__(self, service: _Optional[str] = ...) -> None: ...

class LeaseEvent(_message.Message):
    __slots__ = ("type", "lease", "revision")
    class Type(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        TYPE_UNSPECIFIED: _ClassVar[LeaseEvent.Type]
        EXISTING: _ClassVar[LeaseEvent.Type]
        SYNCED: _ClassVar[LeaseEvent.Type]
        GRANTED: _ClassVar[LeaseEvent.Type]
        CHANGED: _ClassVar[LeaseEvent.Type]
        ENDED: _ClassVar[LeaseEvent.Type]
    TYPE_UNSPECIFIED: LeaseEvent.Type
    EXISTING: LeaseEvent.Type
    SYNCED: LeaseEvent.Type
    GRANTED: LeaseEvent.Type
    CHANGED: LeaseEvent.Type
    ENDED: LeaseEvent.Type
    TYPE_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    type: LeaseEvent.Type
    lease: Lease
    revision: int
    def __init__(self, type: _Optional[_Union[LeaseEvent.Type, str]] = ..., lease: _Optional[_Union[Lease, _Mapping]] = ..., revision: _Optional[int] = ...) -> None: ...
