from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class Msg(_message.Message):
    __slots__ = ("text", "count", "code", "details", "sleep_ms", "size")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    SLEEP_MS_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    text: str
    count: int
    code: int
    details: str
    sleep_ms: int
    size: int
    def __init__(self, text: _Optional[str] = ..., count: _Optional[int] = ..., code: _Optional[int] = ..., details: _Optional[str] = ..., sleep_ms: _Optional[int] = ..., size: _Optional[int] = ...) -> None: ...
