from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DataType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DATA_TYPE_UNSPECIFIED: _ClassVar[DataType]
    DATA_TYPE_FLOAT32: _ClassVar[DataType]
    DATA_TYPE_FLOAT64: _ClassVar[DataType]
    DATA_TYPE_FLOAT16: _ClassVar[DataType]
    DATA_TYPE_BFLOAT16: _ClassVar[DataType]
    DATA_TYPE_INT32: _ClassVar[DataType]
    DATA_TYPE_INT64: _ClassVar[DataType]

class Packing(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PACKING_NONE: _ClassVar[Packing]
    PACKING_UPPER: _ClassVar[Packing]
DATA_TYPE_UNSPECIFIED: DataType
DATA_TYPE_FLOAT32: DataType
DATA_TYPE_FLOAT64: DataType
DATA_TYPE_FLOAT16: DataType
DATA_TYPE_BFLOAT16: DataType
DATA_TYPE_INT32: DataType
DATA_TYPE_INT64: DataType
PACKING_NONE: Packing
PACKING_UPPER: Packing

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data", "packing", "shared_memory")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    PACKING_FIELD_NUMBER: _ClassVar[int]
    SHARED_MEMORY_FIELD_NUMBER: _ClassVar[int]
    dtype: DataType
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    packing: Packing
    shared_memory: SharedMemoryLocation
    def __init__(self, dtype: _Optional[_Union[DataType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ..., packing: _Optional[_Union[Packing, str]] = ..., shared_memory: _Optional[_Union[SharedMemoryLocation, _Mapping]] = ...) -> None: ...

class SharedMemoryLocation(_message.Message):
    __slots__ = ("region", "key", "offset")
    REGION_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    region: str
    key: bytes
    offset: int
    def __init__(self, region: _Optional[str] = ..., key: _Optional[bytes] = ..., offset: _Optional[int] = ...) -> None: ...

class ResultEncoding(_message.Message):
    __slots__ = ("packing", "dtype", "shared_memory")
    PACKING_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHARED_MEMORY_FIELD_NUMBER: _ClassVar[int]
    packing: Packing
    dtype: DataType
    shared_memory: SharedMemoryLocation
    def __init__(self, packing: _Optional[_Union[Packing, str]] = ..., dtype: _Optional[_Union[DataType, str]] = ..., shared_memory: _Optional[_Union[SharedMemoryLocation, _Mapping]] = ...) -> None: ...

class ResultChunk(_message.Message):
    __slots__ = ("name", "dtype", "shape", "offset", "data", "model_version", "packing")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    PACKING_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: DataType
    shape: _containers.RepeatedScalarFieldContainer[int]
    offset: int
    data: bytes
    model_version: str
    packing: Packing
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[_Union[DataType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ..., model_version: _Optional[str] = ..., packing: _Optional[_Union[Packing, str]] = ...) -> None: ...
