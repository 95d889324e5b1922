from google.rpc import status_pb2 as _status_pb2
from hessd.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ModelState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_STATE_UNSPECIFIED: _ClassVar[ModelState]
    MODEL_STATE_LOADING: _ClassVar[ModelState]
    MODEL_STATE_AVAILABLE: _ClassVar[ModelState]
    MODEL_STATE_FAILED: _ClassVar[ModelState]
    MODEL_STATE_UNLOADING: _ClassVar[ModelState]
MODEL_STATE_UNSPECIFIED: ModelState
MODEL_STATE_LOADING: ModelState
MODEL_STATE_AVAILABLE: ModelState
MODEL_STATE_FAILED: ModelState
MODEL_STATE_UNLOADING: ModelState

class HessianRequest(_message.Message):
    __slots__ = ("model_name", "model_version", "x", "wrt", "wrt_inputs", "output_weights", "full", "precision", "result_encoding")
    class XEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _tensor_pb2.Tensor
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ...) -> None: ...
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    X_FIELD_NUMBER: _ClassVar[int]
    WRT_FIELD_NUMBER: _ClassVar[int]
    WRT_INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    FULL_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    RESULT_ENCODING_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    x: _containers.MessageMap[str, _tensor_pb2.Tensor]
    wrt: str
    wrt_inputs: _containers.RepeatedScalarFieldContainer[str]
    output_weights: _tensor_pb2.Tensor
    full: bool
    precision: _tensor_pb2.DataType
    result_encoding: _tensor_pb2.ResultEncoding
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., x: _Optional[_Mapping[str, _tensor_pb2.Tensor]] = ..., wrt: _Optional[str] = ..., wrt_inputs: _Optional[_Iterable[str]] = ..., output_weights: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., full: _Optional[bool] = ..., precision: _Optional[_Union[_tensor_pb2.DataType, str]] = ..., result_encoding: _Optional[_Union[_tensor_pb2.ResultEncoding, _Mapping]] = ...) -> None: ...

class HessianResponse(_message.Message):
    __slots__ = ("hessian", "model_version")
    HESSIAN_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    hessian: _tensor_pb2.Tensor
    model_version: str
    def __init__(self, hessian: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., model_version: _Optional[str] = ...) -> None: ...

class GradientRequest(_message.Message):
    __slots__ = ("model_name", "model_version", "x", "wrt", "wrt_inputs", "output_weights", "precision")
    class XEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _tensor_pb2.Tensor
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ...) -> None: ...
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    X_FIELD_NUMBER: _ClassVar[int]
    WRT_FIELD_NUMBER: _ClassVar[int]
    WRT_INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    x: _containers.MessageMap[str, _tensor_pb2.Tensor]
    wrt: str
    wrt_inputs: _containers.RepeatedScalarFieldContainer[str]
    output_weights: _tensor_pb2.Tensor
    precision: _tensor_pb2.DataType
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., x: _Optional[_Mapping[str, _tensor_pb2.Tensor]] = ..., wrt: _Optional[str] = ..., wrt_inputs: _Optional[_Iterable[str]] = ..., output_weights: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., precision: _Optional[_Union[_tensor_pb2.DataType, str]] = ...) -> None: ...

class GradientResponse(_message.Message):
    __slots__ = ("gradient", "model_version")
    GRADIENT_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    gradient: _tensor_pb2.Tensor
    model_version: str
    def __init__(self, gradient: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., model_version: _Optional[str] = ...) -> None: ...

class HessianVectorProductRequest(_message.Message):
    __slots__ = ("model_name", "model_version", "x", "v", "wrt", "wrt_inputs", "output_weights", "precision")
    class XEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _tensor_pb2.Tensor
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ...) -> None: ...
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    X_FIELD_NUMBER: _ClassVar[int]
    V_FIELD_NUMBER: _ClassVar[int]
    WRT_FIELD_NUMBER: _ClassVar[int]
    WRT_INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    x: _containers.MessageMap[str, _tensor_pb2.Tensor]
    v: _tensor_pb2.Tensor
    wrt: str
    wrt_inputs: _containers.RepeatedScalarFieldContainer[str]
    output_weights: _tensor_pb2.Tensor
    precision: _tensor_pb2.DataType
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., x: _Optional[_Mapping[str, _tensor_pb2.Tensor]] = ..., v: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., wrt: _Optional[str] = ..., wrt_inputs: _Optional[_Iterable[str]] = ..., output_weights: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., precision: _Optional[_Union[_tensor_pb2.DataType, str]] = ...) -> None: ...

class HessianVectorProductResponse(_message.Message):
    __slots__ = ("hvp", "model_version")
    HVP_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    hvp: _tensor_pb2.Tensor
    model_version: str
    def __init__(self, hvp: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., model_version: _Optional[str] = ...) -> None: ...

class EvaluateRequest(_message.Message):
    __slots__ = ("model_name", "model_version", "x", "wrt", "wrt_inputs", "output_weights", "full", "precision", "result_encoding")
    class XEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _tensor_pb2.Tensor
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ...) -> None: ...
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    X_FIELD_NUMBER: _ClassVar[int]
    WRT_FIELD_NUMBER: _ClassVar[int]
    WRT_INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    FULL_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    RESULT_ENCODING_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    x: _containers.MessageMap[str, _tensor_pb2.Tensor]
    wrt: str
    wrt_inputs: _containers.RepeatedScalarFieldContainer[str]
    output_weights: _tensor_pb2.Tensor
    full: bool
    precision: _tensor_pb2.DataType
    result_encoding: _tensor_pb2.ResultEncoding
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., x: _Optional[_Mapping[str, _tensor_pb2.Tensor]] = ..., wrt: _Optional[str] = ..., wrt_inputs: _Optional[_Iterable[str]] = ..., output_weights: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., full: _Optional[bool] = ..., precision: _Optional[_Union[_tensor_pb2.DataType, str]] = ..., result_encoding: _Optional[_Union[_tensor_pb2.ResultEncoding, _Mapping]] = ...) -> None: ...

class EvaluateResponse(_message.Message):
    __slots__ = ("value", "gradient", "hessian", "model_version")
    VALUE_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_FIELD_NUMBER: _ClassVar[int]
    HESSIAN_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    value: _tensor_pb2.Tensor
    gradient: _tensor_pb2.Tensor
    hessian: _tensor_pb2.Tensor
    model_version: str
    def __init__(self, value: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., gradient: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., hessian: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., model_version: _Optional[str] = ...) -> None: ...

class StreamHessianResponse(_message.Message):
    __slots__ = ("index", "hessian", "error", "model_version")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    HESSIAN_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    index: int
    hessian: _tensor_pb2.Tensor
    error: _status_pb2.Status
    model_version: str
    def __init__(self, index: _Optional[int] = ..., hessian: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ..., model_version: _Optional[str] = ...) -> None: ...

class HessianDiagonalRequest(_message.Message):
    __slots__ = ("model_name", "model_version", "x", "wrt", "wrt_inputs", "output_weights", "precision", "method", "probes", "seed")
    class XEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _tensor_pb2.Tensor
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ...) -> None: ...
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    X_FIELD_NUMBER: _ClassVar[int]
    WRT_FIELD_NUMBER: _ClassVar[int]
    WRT_INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    PROBES_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    x: _containers.MessageMap[str, _tensor_pb2.Tensor]
    wrt: str
    wrt_inputs: _containers.RepeatedScalarFieldContainer[str]
    output_weights: _tensor_pb2.Tensor
    precision: _tensor_pb2.DataType
    method: str
    probes: int
    seed: int
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., x: _Optional[_Mapping[str, _tensor_pb2.Tensor]] = ..., wrt: _Optional[str] = ..., wrt_inputs: _Optional[_Iterable[str]] = ..., output_weights: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., precision: _Optional[_Union[_tensor_pb2.DataType, str]] = ..., method: _Optional[str] = ..., probes: _Optional[int] = ..., seed: _Optional[int] = ...) -> None: ...

class HessianDiagonalResponse(_message.Message):
    __slots__ = ("diagonal", "stderr", "model_version")
    DIAGONAL_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    diagonal: _tensor_pb2.Tensor
    stderr: _tensor_pb2.Tensor
    model_version: str
    def __init__(self, diagonal: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., stderr: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., model_version: _Optional[str] = ...) -> None: ...

class HessianTraceRequest(_message.Message):
    __slots__ = ("model_name", "model_version", "x", "wrt", "wrt_inputs", "output_weights", "precision", "method", "probes", "seed")
    class XEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _tensor_pb2.Tensor
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ...) -> None: ...
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    X_FIELD_NUMBER: _ClassVar[int]
    WRT_FIELD_NUMBER: _ClassVar[int]
    WRT_INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    PROBES_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    x: _containers.MessageMap[str, _tensor_pb2.Tensor]
    wrt: str
    wrt_inputs: _containers.RepeatedScalarFieldContainer[str]
    output_weights: _tensor_pb2.Tensor
    precision: _tensor_pb2.DataType
    method: str
    probes: int
    seed: int
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., x: _Optional[_Mapping[str, _tensor_pb2.Tensor]] = ..., wrt: _Optional[str] = ..., wrt_inputs: _Optional[_Iterable[str]] = ..., output_weights: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., precision: _Optional[_Union[_tensor_pb2.DataType, str]] = ..., method: _Optional[str] = ..., probes: _Optional[int] = ..., seed: _Optional[int] = ...) -> None: ...

class HessianTraceResponse(_message.Message):
    __slots__ = ("trace", "stderr", "model_version")
    TRACE_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    trace: _tensor_pb2.Tensor
    stderr: _tensor_pb2.Tensor
    model_version: str
    def __init__(self, trace: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., stderr: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., model_version: _Optional[str] = ...) -> None: ...

class HessianEigenRequest(_message.Message):
    __slots__ = ("model_name", "model_version", "x", "wrt", "wrt_inputs", "output_weights", "precision", "k", "which", "method", "iterations", "tol", "seed")
    class XEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _tensor_pb2.Tensor
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ...) -> None: ...
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    X_FIELD_NUMBER: _ClassVar[int]
    WRT_FIELD_NUMBER: _ClassVar[int]
    WRT_INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    WHICH_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    TOL_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    x: _containers.MessageMap[str, _tensor_pb2.Tensor]
    wrt: str
    wrt_inputs: _containers.RepeatedScalarFieldContainer[str]
    output_weights: _tensor_pb2.Tensor
    precision: _tensor_pb2.DataType
    k: int
    which: str
    method: str
    iterations: int
    tol: float
    seed: int
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., x: _Optional[_Mapping[str, _tensor_pb2.Tensor]] = ..., wrt: _Optional[str] = ..., wrt_inputs: _Optional[_Iterable[str]] = ..., output_weights: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., precision: _Optional[_Union[_tensor_pb2.DataType, str]] = ..., k: _Optional[int] = ..., which: _Optional[str] = ..., method: _Optional[str] = ..., iterations: _Optional[int] = ..., tol: _Optional[float] = ..., seed: _Optional[int] = ...) -> None: ...

class HessianEigenResponse(_message.Message):
    __slots__ = ("eigenvalues", "eigenvectors", "residuals", "model_version")
    EIGENVALUES_FIELD_NUMBER: _ClassVar[int]
    EIGENVECTORS_FIELD_NUMBER: _ClassVar[int]
    RESIDUALS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    eigenvalues: _tensor_pb2.Tensor
    eigenvectors: _tensor_pb2.Tensor
    residuals: _tensor_pb2.Tensor
    model_version: str
    def __init__(self, eigenvalues: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., eigenvectors: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., residuals: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., model_version: _Optional[str] = ...) -> None: ...

class HessianSpectrumRequest(_message.Message):
    __slots__ = ("model_name", "model_version", "x", "wrt", "wrt_inputs", "output_weights", "precision", "probes", "iterations", "seed")
    class XEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _tensor_pb2.Tensor
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ...) -> None: ...
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    X_FIELD_NUMBER: _ClassVar[int]
    WRT_FIELD_NUMBER: _ClassVar[int]
    WRT_INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    PROBES_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    x: _containers.MessageMap[str, _tensor_pb2.Tensor]
    wrt: str
    wrt_inputs: _containers.RepeatedScalarFieldContainer[str]
    output_weights: _tensor_pb2.Tensor
    precision: _tensor_pb2.DataType
    probes: int
    iterations: int
    seed: int
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., x: _Optional[_Mapping[str, _tensor_pb2.Tensor]] = ..., wrt: _Optional[str] = ..., wrt_inputs: _Optional[_Iterable[str]] = ..., output_weights: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., precision: _Optional[_Union[_tensor_pb2.DataType, str]] = ..., probes: _Optional[int] = ..., iterations: _Optional[int] = ..., seed: _Optional[int] = ...) -> None: ...

class HessianSpectrumResponse(_message.Message):
    __slots__ = ("nodes", "weights", "model_version")
    NODES_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    nodes: _tensor_pb2.Tensor
    weights: _tensor_pb2.Tensor
    model_version: str
    def __init__(self, nodes: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., weights: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., model_version: _Optional[str] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "server_version")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelVersions]
    server_version: str
    def __init__(self, models: _Optional[_Iterable[_Union[ModelVersions, _Mapping]]] = ..., server_version: _Optional[str] = ...) -> None: ...

class ModelVersions(_message.Message):
    __slots__ = ("name", "versions", "version_status", "error", "layout_errors")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    VERSION_STATUS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_ERRORS_FIELD_NUMBER: _ClassVar[int]
    name: str
    versions: _containers.RepeatedScalarFieldContainer[str]
    version_status: _containers.RepeatedCompositeFieldContainer[ModelVersionStatus]
    error: str
    layout_errors: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., versions: _Optional[_Iterable[str]] = ..., version_status: _Optional[_Iterable[_Union[ModelVersionStatus, _Mapping]]] = ..., error: _Optional[str] = ..., layout_errors: _Optional[_Iterable[str]] = ...) -> None: ...

class ModelVersionStatus(_message.Message):
    __slots__ = ("version", "state", "error")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    version: str
    state: ModelState
    error: str
    def __init__(self, version: _Optional[str] = ..., state: _Optional[_Union[ModelState, str]] = ..., error: _Optional[str] = ...) -> None: ...

class GetModelMetadataRequest(_message.Message):
    __slots__ = ("model_name", "model_version")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ...) -> None: ...

class GetModelMetadataResponse(_message.Message):
    __slots__ = ("name", "version", "inputs", "outputs", "strategy", "batch_independent", "buckets", "compile_count", "xla_fallbacks", "version_status", "strategy_timings")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    BATCH_INDEPENDENT_FIELD_NUMBER: _ClassVar[int]
    BUCKETS_FIELD_NUMBER: _ClassVar[int]
    COMPILE_COUNT_FIELD_NUMBER: _ClassVar[int]
    XLA_FALLBACKS_FIELD_NUMBER: _ClassVar[int]
    VERSION_STATUS_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_TIMINGS_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    inputs: _containers.RepeatedCompositeFieldContainer[TensorInfo]
    outputs: _containers.RepeatedCompositeFieldContainer[TensorInfo]
    strategy: str
    batch_independent: bool
    buckets: _containers.RepeatedScalarFieldContainer[int]
    compile_count: int
    xla_fallbacks: _containers.RepeatedScalarFieldContainer[str]
    version_status: _containers.RepeatedCompositeFieldContainer[ModelVersionStatus]
    strategy_timings: _containers.RepeatedCompositeFieldContainer[StrategyTiming]
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[TensorInfo, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[TensorInfo, _Mapping]]] = ..., strategy: _Optional[str] = ..., batch_independent: _Optional[bool] = ..., buckets: _Optional[_Iterable[int]] = ..., compile_count: _Optional[int] = ..., xla_fallbacks: _Optional[_Iterable[str]] = ..., version_status: _Optional[_Iterable[_Union[ModelVersionStatus, _Mapping]]] = ..., strategy_timings: _Optional[_Iterable[_Union[StrategyTiming, _Mapping]]] = ...) -> None: ...

class StrategyTiming(_message.Message):
    __slots__ = ("batch", "precision", "strategy", "outcome", "seconds", "detail", "source")
    BATCH_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    batch: int
    precision: str
    strategy: str
    outcome: str
    seconds: float
    detail: str
    source: str
    def __init__(self, batch: _Optional[int] = ..., precision: _Optional[str] = ..., strategy: _Optional[str] = ..., outcome: _Optional[str] = ..., seconds: _Optional[float] = ..., detail: _Optional[str] = ..., source: _Optional[str] = ...) -> None: ...

class TensorInfo(_message.Message):
    __slots__ = ("name", "shape", "dtype")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: str
    def __init__(self, name: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[str] = ...) -> None: ...
