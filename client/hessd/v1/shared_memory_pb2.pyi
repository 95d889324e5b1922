from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class RegisterSharedMemoryRequest(_message.Message):
    __slots__ = ("name", "size", "key")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    name: str
    size: int
    key: bytes
    def __init__(self, name: _Optional[str] = ..., size: _Optional[int] = ..., key: _Optional[bytes] = ...) -> None: ...

class RegisterSharedMemoryResponse(_message.Message):
    __slots__ = ("name", "size", "proof", "proof_offset")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    PROOF_OFFSET_FIELD_NUMBER: _ClassVar[int]
    name: str
    size: int
    proof: bytes
    proof_offset: int
    def __init__(self, name: _Optional[str] = ..., size: _Optional[int] = ..., proof: _Optional[bytes] = ..., proof_offset: _Optional[int] = ...) -> None: ...

class ConfirmSharedMemoryRequest(_message.Message):
    __slots__ = ("name", "key")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    name: str
    key: bytes
    def __init__(self, name: _Optional[str] = ..., key: _Optional[bytes] = ...) -> None: ...

class ConfirmSharedMemoryResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class UnregisterSharedMemoryRequest(_message.Message):
    __slots__ = ("name", "key")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    name: str
    key: bytes
    def __init__(self, name: _Optional[str] = ..., key: _Optional[bytes] = ...) -> None: ...

class UnregisterSharedMemoryResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
