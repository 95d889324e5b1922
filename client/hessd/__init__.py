"""hessd: the thin SDK for the hessd Hessian server.

Mirrors the in-process library ``hessd_server`` name for name over gRPC, with
grpcio, protobuf and numpy only (never TensorFlow)::

    import hessd
    with hessd.Client("127.0.0.1:50051") as client:
        h = client.hessian("demo", x)       # (B, *S, *S), like hessd_server.hessian
"""

from hessd._async.admin_client import AsyncModelAdminClient
from hessd._async.client import AsyncClient
from hessd._sync.admin_client import ModelAdminClient
from hessd._sync.client import Client
from hessd._version import __version__
from hessd.blocks import join_vector, split_hessian, split_vector
from hessd.errors import (
    BatchDependenceError,
    CancelledError,
    DeadlineExceededError,
    DtypeError,
    HessdError,
    InternalError,
    InvalidArgumentError,
    InvalidReplyError,
    MalformedRequestError,
    ModelLoadError,
    ModelNotFoundError,
    OutOfMemoryError,
    OutputWeightsError,
    PrecisionError,
    InvalidSharedMemoryError,
    ResultTooLargeError,
    ShapeError,
    SharedMemoryError,
    SharedMemoryExistsError,
    SharedMemoryNotFoundError,
    SharedMemoryPermissionError,
    TensorEncodingError,
    UnauthenticatedError,
    UnavailableError,
    UnknownInputError,
)
from hessd.results import (
    Diagonal,
    Eigen,
    Evaluation,
    ModelMetadata,
    ModelStatus,
    Spectrum,
    StrategyTiming,
    TensorInfo,
    Trace,
    Versioned,
    VersionStatus,
)

__all__ = [
    "__version__",
    "AsyncClient",
    "AsyncModelAdminClient",
    "BatchDependenceError",
    "CancelledError",
    "Client",
    "DeadlineExceededError",
    "DtypeError",
    "Diagonal",
    "Eigen",
    "Evaluation",
    "HessdError",
    "InternalError",
    "InvalidArgumentError",
    "InvalidReplyError",
    "InvalidSharedMemoryError",
    "MalformedRequestError",
    "ModelLoadError",
    "ModelMetadata",
    "ModelAdminClient",
    "ModelStatus",
    "ModelNotFoundError",
    "OutOfMemoryError",
    "OutputWeightsError",
    "PrecisionError",
    "ResultTooLargeError",
    "ShapeError",
    "SharedMemoryError",
    "SharedMemoryExistsError",
    "SharedMemoryNotFoundError",
    "SharedMemoryPermissionError",
    "Spectrum",
    "StrategyTiming",
    "TensorEncodingError",
    "TensorInfo",
    "Trace",
    "UnauthenticatedError",
    "UnavailableError",
    "UnknownInputError",
    "VersionStatus",
    "Versioned",
    "join_vector",
    "split_hessian",
    "split_vector",
]
