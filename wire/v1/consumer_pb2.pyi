from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class AttachRequest(_message.Message):
    __slots__ = ("network", "address", "token")
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    network: str
    address: str
    token: str
    def __init__(self, network: _Optional[str] = ..., address: _Optional[str] = ..., token: _Optional[str] = ...) -> None: ...

class AttachResponse(_message.Message):
    __slots__ = ("network", "address", "vni")
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    VNI_FIELD_NUMBER: _ClassVar[int]
    network: str
    address: str
    vni: int
    def __init__(self, network: _Optional[str] = ..., address: _Optional[str] = ..., vni: _Optional[int] = ...) -> None: ...

class DetachRequest(_message.Message):
    __slots__ = ("network", "address", "token")
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    network: str
    address: str
    token: str
    def __init__(self, network: _Optional[str] = ..., address: _Optional[str] = ..., token: _Optional[str] = ...) -> None: ...

class DetachResponse(_message.Message):
    __slots__ = ("released_leases",)
    RELEASED_LEASES_FIELD_NUMBER: _ClassVar[int]
    released_leases: int
    def __init__(self, released_leases: _Optional[int] = ...) -> None: ...

class SendRequest(_message.Message):
    __slots__ = ("network", "src", "src_port", "target", "payload", "token", "request_id", "idempotent")
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    SRC_FIELD_NUMBER: _ClassVar[int]
    SRC_PORT_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENT_FIELD_NUMBER: _ClassVar[int]
    network: str
    src: str
    src_port: int
    target: str
    payload: bytes
    token: str
    request_id: int
    idempotent: bool
    def __init__(self, network: _Optional[str] = ..., src: _Optional[str] = ..., src_port: _Optional[int] = ..., target: _Optional[str] = ..., payload: _Optional[bytes] = ..., token: _Optional[str] = ..., request_id: _Optional[int] = ..., idempotent: _Optional[bool] = ...) -> None: ...

class SendResponse(_message.Message):
    __slots__ = ("src", "src_port", "dst", "payload", "request_id", "status_code", "status_message")
    SRC_FIELD_NUMBER: _ClassVar[int]
    SRC_PORT_FIELD_NUMBER: _ClassVar[int]
    DST_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_CODE_FIELD_NUMBER: _ClassVar[int]
    STATUS_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    src: str
    src_port: int
    dst: str
    payload: bytes
    request_id: int
    status_code: int
    status_message: str
    def __init__(self, src: _Optional[str] = ..., src_port: _Optional[int] = ..., dst: _Optional[str] = ..., payload: _Optional[bytes] = ..., request_id: _Optional[int] = ..., status_code: _Optional[int] = ..., status_message: _Optional[str] = ...) -> None: ...
