"""A request's ``result_encoding`` as the servicer reads it."""

from __future__ import annotations

import pytest

from hessd.errors import InvalidArgumentError
from hessd.v1 import hessian_service_pb2 as pb
from hessd.v1.tensor_pb2 import DataType, Packing, ResultEncoding
from hessd_server.serving.data_plane.reply_plan import Encoding, encoding_of
from hessd_server.serving.data_plane.reply_plan import PLAIN_ENCODING
from hessd_server.serving.data_plane.reply_plan import request_encoding as _encoding

PRECISIONS = (DataType.DATA_TYPE_UNSPECIFIED, DataType.DATA_TYPE_FLOAT32, DataType.DATA_TYPE_FLOAT64)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("chunked", [False, True])
def test_a_request_without_result_encoding_gets_what_an_empty_one_gives(precision: int, chunked: bool) -> None:
    for request in (pb.HessianRequest(precision=precision), pb.EvaluateRequest(precision=precision)):
        assert not request.HasField("result_encoding")
        assert _encoding(request, chunked=chunked) == PLAIN_ENCODING
        assert encoding_of(ResultEncoding(), precision, chunked=chunked) == PLAIN_ENCODING


def test_a_set_result_encoding_is_still_read_and_checked() -> None:
    packed = pb.HessianRequest(result_encoding=ResultEncoding(packing=Packing.PACKING_UPPER, dtype=DataType.DATA_TYPE_FLOAT16))
    assert _encoding(packed, chunked=False) == Encoding(Packing.PACKING_UPPER, DataType.DATA_TYPE_FLOAT16, None)
    bad = pb.HessianRequest(result_encoding=ResultEncoding(packing=7))
    with pytest.raises(InvalidArgumentError, match="result_encoding.packing is 7"):
        _encoding(bad, chunked=False)
