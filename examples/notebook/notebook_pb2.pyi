from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Entry(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: bytes
    def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...

class PutRequest(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: bytes
    def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...

class PutReply(_message.Message):
    __slots__ = ("replaced", "keys")
    REPLACED_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    replaced: bool
    keys: int
    def __init__(self, replaced: _Optional[bool] = ..., keys: _Optional[int] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: str
    def __init__(self, key: _Optional[str] = ...) -> None: ...

class GetReply(_message.Message):
    __slots__ = ("found", "value")
    FOUND_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    found: bool
    value: bytes
    def __init__(self, found: _Optional[bool] = ..., value: _Optional[bytes] = ...) -> None: ...

class ScanRequest(_message.Message):
    __slots__ = ("prefix",)
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    prefix: str
    def __init__(self, prefix: _Optional[str] = ...) -> None: ...

class AppendReply(_message.Message):
    __slots__ = ("appended", "keys")
    APPENDED_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    appended: int
    keys: int
    def __init__(self, appended: _Optional[int] = ..., keys: _Optional[int] = ...) -> None: ...

class Line(_message.Message):
    __slots__ = ("text", "data")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    text: str
    data: bytes
    def __init__(self, text: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class LineReply(_message.Message):
    __slots__ = ("seen", "text", "data")
    SEEN_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    seen: int
    text: str
    data: bytes
    def __init__(self, seen: _Optional[int] = ..., text: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class FailRequest(_message.Message):
    __slots__ = ("code", "details", "trailer_key", "trailer_value", "trailer_bin")
    CODE_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    TRAILER_KEY_FIELD_NUMBER: _ClassVar[int]
    TRAILER_VALUE_FIELD_NUMBER: _ClassVar[int]
    TRAILER_BIN_FIELD_NUMBER: _ClassVar[int]
    code: int
    details: str
    trailer_key: str
    trailer_value: str
    trailer_bin: bytes
    def __init__(self, code: _Optional[int] = ..., details: _Optional[str] = ..., trailer_key: _Optional[str] = ..., trailer_value: _Optional[str] = ..., trailer_bin: _Optional[bytes] = ...) -> None: ...

class FailReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SleepRequest(_message.Message):
    __slots__ = ("ms",)
    MS_FIELD_NUMBER: _ClassVar[int]
    ms: int
    def __init__(self, ms: _Optional[int] = ...) -> None: ...

class SleepReply(_message.Message):
    __slots__ = ("slept_ms",)
    SLEPT_MS_FIELD_NUMBER: _ClassVar[int]
    slept_ms: int
    def __init__(self, slept_ms: _Optional[int] = ...) -> None: ...

class WhoamiRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Header(_message.Message):
    __slots__ = ("key", "value", "binary")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    BINARY_FIELD_NUMBER: _ClassVar[int]
    key: str
    value: str
    binary: bytes
    def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ..., binary: _Optional[bytes] = ...) -> None: ...

class WhoamiReply(_message.Message):
    __slots__ = ("vm_id", "pid", "workdir", "claim", "metadata", "deadline_remaining_s", "keys")
    VM_ID_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    WORKDIR_FIELD_NUMBER: _ClassVar[int]
    CLAIM_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_REMAINING_S_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    vm_id: str
    pid: int
    workdir: str
    claim: str
    metadata: _containers.RepeatedCompositeFieldContainer[Header]
    deadline_remaining_s: float
    keys: int
    def __init__(self, vm_id: _Optional[str] = ..., pid: _Optional[int] = ..., workdir: _Optional[str] = ..., claim: _Optional[str] = ..., metadata: _Optional[_Iterable[_Union[Header, _Mapping]]] = ..., deadline_remaining_s: _Optional[float] = ..., keys: _Optional[int] = ...) -> None: ...
