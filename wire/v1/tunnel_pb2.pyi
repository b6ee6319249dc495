from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class InnerHeader(_message.Message):
    __slots__ = ("network", "src", "src_port", "dst", "dst_port", "request_id", "deadline_ms", "idempotent")
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    SRC_FIELD_NUMBER: _ClassVar[int]
    SRC_PORT_FIELD_NUMBER: _ClassVar[int]
    DST_FIELD_NUMBER: _ClassVar[int]
    DST_PORT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENT_FIELD_NUMBER: _ClassVar[int]
    network: str
    src: str
    src_port: int
    dst: str
    dst_port: int
    request_id: int
    deadline_ms: int
    idempotent: bool
    def __init__(self, network: _Optional[str] = ..., src: _Optional[str] = ..., src_port: _Optional[int] = ..., dst: _Optional[str] = ..., dst_port: _Optional[int] = ..., request_id: _Optional[int] = ..., deadline_ms: _Optional[int] = ..., idempotent: _Optional[bool] = ...) -> None: ...

class OuterHeader(_message.Message):
    __slots__ = ("vni", "src_host", "dst_host", "fencing_token")
    VNI_FIELD_NUMBER: _ClassVar[int]
    SRC_HOST_FIELD_NUMBER: _ClassVar[int]
    DST_HOST_FIELD_NUMBER: _ClassVar[int]
    FENCING_TOKEN_FIELD_NUMBER: _ClassVar[int]
    vni: int
    src_host: str
    dst_host: str
    fencing_token: int
    def __init__(self, vni: _Optional[int] = ..., src_host: _Optional[str] = ..., dst_host: _Optional[str] = ..., fencing_token: _Optional[int] = ...) -> None: ...

class Frame(_message.Message):
    __slots__ = ("id", "outer", "inner", "payload", "status_code", "status_message", "delivered", "traceparent")
    ID_FIELD_NUMBER: _ClassVar[int]
    OUTER_FIELD_NUMBER: _ClassVar[int]
    INNER_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    STATUS_CODE_FIELD_NUMBER: _ClassVar[int]
    STATUS_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DELIVERED_FIELD_NUMBER: _ClassVar[int]
    TRACEPARENT_FIELD_NUMBER: _ClassVar[int]
    id: int
    outer: OuterHeader
    inner: InnerHeader
    payload: bytes
    status_code: int
    status_message: str
    delivered: bool
    traceparent: str
    def __init__(self, id: _Optional[int] = ..., outer: _Optional[_Union[OuterHeader, _Mapping]] = ..., inner: _Optional[_Union[InnerHeader, _Mapping]] = ..., payload: _Optional[bytes] = ..., status_code: _Optional[int] = ..., status_message: _Optional[str] = ..., delivered: _Optional[bool] = ..., traceparent: _Optional[str] = ...) -> None: ...

class FrameBatch(_message.Message):
    __slots__ = ("frames",)
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    frames: _containers.RepeatedCompositeFieldContainer[Frame]
    def __init__(self, frames: _Optional[_Iterable[_Union[Frame, _Mapping]]] = ...) -> None: ...
