"""The fast path for one dense float tensor must answer exactly as the ordinary path does.

Every body goes through both :func:`parse_json_body` (orjson, nested lists) and
:func:`parse_predict_body` (simdjson straight to a buffer, when it applies) and then
through the same decoder; results must match in dtype, shape and values, and errors
word for word. The bodies that should take the fast path are asserted to take it, so
a fast path that silently stopped applying would fail here too.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from jupyter_tfserve.engine.codecs import decode_workers, json_body, json_predict
from jupyter_tfserve.engine.errors import ServingError
from jupyter_tfserve.engine.signature import (
    DT_DOUBLE,
    DT_FLOAT,
    DT_HALF,
    DT_INT32,
    DT_STRING,
    SignatureSpec,
    TensorSpec,
)

pytestmark = pytest.mark.skipif(decode_workers.simdjson is None, reason="pysimdjson is not installed here")


def signature(**inputs: int) -> SignatureSpec:
    return SignatureSpec(
        name="serving_default",
        method_name="tensorflow/serving/predict",
        inputs={k: TensorSpec(k, f"{k}:0", dtype, None) for k, dtype in inputs.items()},
    )


FLOAT = signature(x=DT_FLOAT)
DOUBLE = signature(x=DT_DOUBLE)
HALF = signature(x=DT_HALF)
INT = signature(x=DT_INT32)
TEXT = signature(x=DT_STRING)
TWO = signature(a=DT_FLOAT, b=DT_FLOAT)


@pytest.fixture(autouse=True)
def fast_path_for_small_bodies(monkeypatch):
    monkeypatch.setattr(json_body, "FAST_PATH_MIN_BYTES", 0)


def outcome(parse, body: bytes, sig: SignatureSpec):
    try:
        inputs, rows = json_predict.decode_predict_request(parse(body), sig)
    except ServingError as error:
        return ("error", error.code, error.message)
    return ("ok", rows, {key: (value.dtype, value.shape, value.tobytes()) for key, value in inputs.items()})


def assert_same(body: bytes, sig: SignatureSpec):
    slow = outcome(json_body.parse_json_body, body, sig)
    fast = outcome(json_body.parse_predict_body, body, sig)
    assert fast == slow, body[:200]
    return slow


def takes_fast_path(body: bytes) -> bool:
    try:
        request = json_body.parse_predict_body(body)
    except ServingError:
        return False
    return any(isinstance(value, json_body.DenseNumbers) for value in request.values())


DENSE_BODIES = [
    b'{"instances": [[1.5, 2], [3, -4.25e-3]]}',
    b'{"inputs": [[1.5, 2], [3, 4]]}',
    b'{"instances": [1, 2, 3]}',
    b'{"inputs": [[[1, 2, 3]], [[4, 5, 6]]]}',
    b'{"signature_name": "serving_default", "instances": [[0.1, 0.2]]}',
    b'{"instances": [[0.1, 0.2]], "signature_name": "other"}',
    b'{\n  "instances" : [ [ 1.0 ,\t2.0 ] ,\r\n [ 3.0 , 4.0 ] ]\n}',
    b'{"instances": [[1E+2, -2.5E-1, 0, -0]]}',
    b'{"instan\\u0063es": [[1.0, 2.0]]}',
    b'{"instances": [1e39, -1e39]}',
    b'{"instances": [16777217, 0.5]}',
    b'{"instances": [16777217]}',
    b'{"instances": [18446744073709551615, 1]}',
    b'{"instances": [9007199254740993]}',
]

OTHER_BODIES = [
    b'{"instances": [[1, 2], [3, 4, 5], [6]]}',  # ragged, and not the same count
    b'{"instances": [[1, 2], [3], [4, 5, 6]]}',  # ragged with the count of a dense 3x2
    b'{"instances": [[1, [2]], [3, 4]]}',  # mixed depths, 4 numbers like a 2x2
    b'{"instances": [[[1], [2]], [3, 4]]}',
    b'{"instances": [[1, 2], []]}',
    b'{"instances": []}',
    b'{"instances": [[]]}',
    b'{"instances": [1, true]}',
    b'{"instances": [1, null]}',
    b'{"instances": [1, "2"]}',
    b'{"instances": [{"x": [1.0]}]}',
    b'{"instances": [NaN, Infinity]}',
    b'{"instances": [1], "instances": [2, 3]}',
    b'{"instances": [1], "inputs": [2]}',
    b'{"instances": [1], "extra": 1}',
    b'{"signature_name": "a[0]", "instances": [[1, 2]]}',
    b'{"signature_name": 7, "instances": [[1, 2]]}',
    b'{"inputs": 3.5}',
    b'{"inputs": {"x": [1.0]}}',
    b'[1, 2]',
    b'{"instances": [1, 2]',
    b'{"instances": [01]}',
    b'',
    ("{\"instances\": " + "[" * 70 + "1" + "]" * 70 + "}").encode(),
]


@pytest.mark.parametrize("body", DENSE_BODIES)
@pytest.mark.parametrize("sig", [FLOAT, DOUBLE, HALF], ids=["float32", "float64", "float16"])
def test_dense_numbers_decode_exactly_as_the_ordinary_path(body, sig):
    assert takes_fast_path(body)
    assert_same(body, sig)


@pytest.mark.parametrize("body", DENSE_BODIES[:4])
@pytest.mark.parametrize("sig", [INT, TEXT, TWO], ids=["int32", "string", "two-inputs"])
def test_other_signatures_fall_back_to_the_ordinary_path(body, sig):
    assert_same(body, sig)


@pytest.mark.parametrize("body", OTHER_BODIES)
def test_bodies_the_fast_path_cannot_vouch_for_go_the_ordinary_way(body):
    assert not takes_fast_path(body)
    for sig in (FLOAT, INT, TEXT):
        assert_same(body, sig)


def test_a_real_image_sized_request_takes_the_fast_path_at_the_default_threshold(monkeypatch):
    monkeypatch.undo()
    rng = np.random.default_rng(0)
    image = rng.random((2, 32, 32, 3), np.float32)
    body = json.dumps({"instances": image.tolist()}).encode()
    assert len(body) > json_body.FAST_PATH_MIN_BYTES
    assert takes_fast_path(body)
    kind, rows, inputs = assert_same(body, FLOAT)
    assert (kind, rows) == ("ok", True)
    dtype, shape, data = inputs["x"]
    assert (dtype, shape) == (np.float32, (2, 32, 32, 3))
    np.testing.assert_array_equal(np.frombuffer(data, np.float32).reshape(shape), image)
    tiny = b'{"instances": [[1.0, 2.0]]}'
    assert not takes_fast_path(tiny)  # below the threshold orjson is cheaper


def test_the_parser_is_reusable_after_every_kind_of_body():
    for body in [*OTHER_BODIES, *DENSE_BODIES] * 2:
        takes_fast_path(body)
    assert takes_fast_path(DENSE_BODIES[0])
