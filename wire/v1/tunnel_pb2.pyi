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

class MetadataEntry(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: bytes
    def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...

class CallStart(_message.Message):
    __slots__ = ("outer", "inner", "method", "metadata", "traceparent")
    OUTER_FIELD_NUMBER: _ClassVar[int]
    INNER_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    TRACEPARENT_FIELD_NUMBER: _ClassVar[int]
    outer: OuterHeader
    inner: InnerHeader
    method: str
    metadata: _containers.RepeatedCompositeFieldContainer[MetadataEntry]
    traceparent: str
    def __init__(self, outer: _Optional[_Union[OuterHeader, _Mapping]] = ..., inner: _Optional[_Union[InnerHeader, _Mapping]] = ..., method: _Optional[str] = ..., metadata: _Optional[_Iterable[_Union[MetadataEntry, _Mapping]]] = ..., traceparent: _Optional[str] = ...) -> None: ...

class CallUp(_message.Message):
    __slots__ = ("start", "messages", "half_close")
    START_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    HALF_CLOSE_FIELD_NUMBER: _ClassVar[int]
    start: CallStart
    messages: _containers.RepeatedScalarFieldContainer[bytes]
    half_close: bool
    def __init__(self, start: _Optional[_Union[CallStart, _Mapping]] = ..., messages: _Optional[_Iterable[bytes]] = ..., half_close: _Optional[bool] = ...) -> None: ...

class CallEnd(_message.Message):
    __slots__ = ("code", "details", "trailing_metadata", "broken")
    CODE_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    TRAILING_METADATA_FIELD_NUMBER: _ClassVar[int]
    BROKEN_FIELD_NUMBER: _ClassVar[int]
    code: int
    details: str
    trailing_metadata: _containers.RepeatedCompositeFieldContainer[MetadataEntry]
    broken: bool
    def __init__(self, code: _Optional[int] = ..., details: _Optional[str] = ..., trailing_metadata: _Optional[_Iterable[_Union[MetadataEntry, _Mapping]]] = ..., broken: _Optional[bool] = ...) -> None: ...

class CallDown(_message.Message):
    __slots__ = ("accepted", "headers", "messages", "end")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    headers: Headers
    messages: _containers.RepeatedScalarFieldContainer[bytes]
    end: CallEnd
    def __init__(self, accepted: _Optional[bool] = ..., headers: _Optional[_Union[Headers, _Mapping]] = ..., messages: _Optional[_Iterable[bytes]] = ..., end: _Optional[_Union[CallEnd, _Mapping]] = ...) -> None: ...

class Headers(_message.Message):
    __slots__ = ("metadata",)
    METADATA_FIELD_NUMBER: _ClassVar[int]
    metadata: _containers.RepeatedCompositeFieldContainer[MetadataEntry]
    def __init__(self, metadata: _Optional[_Iterable[_Union[MetadataEntry, _Mapping]]] = ...) -> None: ...
