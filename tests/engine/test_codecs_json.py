"""The wire formats: JSON rows and columns, b64, NaN/Infinity, TensorProtos, tf.Examples.

Signatures are built by hand so every rule is checked without a SavedModel.
"""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from jupyter_tfserve.engine.codecs.json_body import parse_json_body
from jupyter_tfserve.engine.codecs.json_encode import encode_json, encode_predict_response
from jupyter_tfserve.engine.codecs.json_example import examples_from_json
from jupyter_tfserve.engine.codecs.json_predict import decode_predict_request, shape_hints
from jupyter_tfserve.engine.codecs.tensor_proto import (
    decode_tensor_protos,
    numpy_to_tensor_proto,
    tensor_proto_to_numpy,
)
from jupyter_tfserve.engine.errors import Code, ServingError
from jupyter_tfserve.engine.signature import (
    DT_BOOL,
    DT_COMPLEX64,
    DT_COMPLEX128,
    DT_DOUBLE,
    DT_FLOAT,
    DT_HALF,
    DT_INT8,
    DT_INT16,
    DT_INT32,
    DT_INT64,
    DT_STRING,
    DT_UINT8,
    DT_UINT32,
    DT_UINT64,
    NUMPY_DTYPES,
    SignatureSpec,
    TensorSpec,
)


def signature(**inputs: tuple[int, tuple | None]) -> SignatureSpec:
    return SignatureSpec(
        name="serving_default",
        method_name="tensorflow/serving/predict",
        inputs={k: TensorSpec(k, f"{k}:0", dtype, shape) for k, (dtype, shape) in inputs.items()},
    )


HALF = signature(x=(DT_FLOAT, (-1, 1)))
MULTI = signature(a=(DT_FLOAT, (-1, 2)), b=(DT_INT64, (-1,)))
TEXT = signature(s=(DT_STRING, (-1,)))
NONE = signature()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def invalid(call, *fragments: str) -> str:
    with pytest.raises(ServingError) as caught:
        call()
    assert caught.value.code is Code.INVALID_ARGUMENT
    for fragment in fragments:
        assert fragment in caught.value.message, caught.value.message
    return caught.value.message


def decode(body: dict, sig: SignatureSpec = HALF) -> dict[str, np.ndarray]:
    return decode_predict_request(body, sig)[0]


def decode_one(value, dtype: int, rows: bool = True) -> np.ndarray:
    sig = signature(v=(dtype, None))
    return decode({"instances" if rows else "inputs": value}, sig)["v"]


def decode_error(value, dtype: int, *fragments: str, rows: bool = True) -> str:
    sig = signature(v=(dtype, None))
    return invalid(lambda: decode({"instances" if rows else "inputs": value}, sig), *fragments)


def assert_array(actual: np.ndarray, expected, dtype) -> None:
    expected = np.asarray(expected, dtype=dtype)
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    np.testing.assert_array_equal(actual, expected)


# -- parse_json_body ---------------------------------------------------------------------------------


def test_parse_json_body_reads_objects():
    assert parse_json_body(b'{"instances": [1.0, 2]}') == {"instances": [1.0, 2]}
    assert parse_json_body('{"s": "héllo"}'.encode()) == {"s": "héllo"}


def test_parse_json_body_accepts_nan_and_infinity_literals():
    body = parse_json_body(b'{"instances": [NaN, Infinity, -Infinity, 1.5]}')
    values = body["instances"]
    assert np.isnan(values[0])
    assert values[1:] == [float("inf"), float("-inf"), 1.5]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"", "JSON Parse error: The document is empty"),
        (b"  \n", "JSON Parse error: The document is empty"),
        (b"{nope", "JSON Parse error"),
        (b'{"a": 1,}', "JSON Parse error"),
        (b'{"a": "\xff"}', "UTF-8"),
        (b"[1, 2]", "must be a JSON object"),
        (b'"text"', "must be a JSON object"),
        (b"[" * 100_000, "JSON Parse error"),
    ],
)
def test_parse_json_body_errors(body, fragment):
    invalid(lambda: parse_json_body(body), fragment)


# -- decode_predict_request: row format ------------------------------------------------------------


def test_row_format_half_plus_two_keeps_the_instance_shape():
    inputs, row = decode_predict_request({"instances": [2.0, 3.0, 4.0]}, HALF)
    assert row is True
    assert list(inputs) == ["x"]
    assert_array(inputs["x"], [2.0, 3.0, 4.0], np.float32)  # shape (3,) although [-1, 1] is declared


def test_row_format_single_input_values_and_named_objects():
    assert_array(decode({"instances": [[1.0], [2.5]]})["x"], [[1.0], [2.5]], np.float32)
    assert_array(decode({"instances": [{"x": [1]}, {"x": [2]}]})["x"], [[1.0], [2.0]], np.float32)
    assert_array(decode({"instances": [[[1, 2], [3, 4]]]})["x"], [[[1, 2], [3, 4]]], np.float32)


def test_row_format_several_inputs_are_stacked_per_alias():
    inputs, row = decode_predict_request(
        {"instances": [{"a": [1, 2.5], "b": 3}, {"b": 6, "a": [4, 5]}]}, MULTI
    )
    assert row is True
    assert_array(inputs["a"], [[1.0, 2.5], [4.0, 5.0]], np.float32)
    assert_array(inputs["b"], [3, 6], np.int64)


def test_row_format_strings_and_b64_in_several_inputs():
    sig = signature(s=(DT_STRING, None), n=(DT_INT32, None))
    inputs = decode({"instances": [{"s": "a", "n": 1}, {"s": {"b64": b64(b"\x00\x01")}, "n": 2}]}, sig)
    assert_array(inputs["s"], [b"a", b"\x00\x01"], object)
    assert_array(inputs["n"], [1, 2], np.int32)


@pytest.mark.parametrize(
    ("body", "fragments"),
    [
        ({"instances": [1.0], "inputs": [1.0]}, ['only one of "instances"', "not both"]),
        ({}, ['Missing "inputs" or "instances"']),
        ({"signature_name": "x"}, ['Missing "inputs" or "instances"']),
        ({"instances": []}, ['"instances" is an empty list']),
        ({"instances": 3}, ['"instances" must be a list']),
        ({"instances": {"x": [1.0]}}, ['"instances" must be a list']),
        ({"instances": ["a"]}, ["Input 'x'", "DT_FLOAT", "the string 'a'"]),
        ({"instances": ["1.5"]}, ["Input 'x'", "DT_FLOAT", "the string '1.5'"]),
        ({"instances": [1.0, "2"]}, ["Input 'x' in instance 1", "DT_FLOAT", "the string '2'"]),
        ({"instances": [True]}, ["Input 'x'", "DT_FLOAT", "got true"]),
        ({"instances": [1.0, None]}, ["Input 'x' in instance 1", "DT_FLOAT", "got null"]),
        ({"instances": [[1.0], [1.0, 2.0]]}, ["Input 'x' is ragged", "instance 1 has shape [2]", "shape [1]"]),
        ({"instances": [[1.0], 2.0]}, ["Input 'x' is ragged"]),
        ({"instances": [[[1.0], [2.0, 3.0]]]}, ["Input 'x' in instance 0 is not a dense tensor"]),
        ({"instances": [1.0, {"x": 2.0}]}, ["Input 'x' in instance 1", "DT_FLOAT", "a JSON object"]),
        ({"instances": [{"x": 1.0}, 2.0]}, ["Instance 1 is the floating point number 2.0", "object"]),
        ({"instances": [{"y": 1.0}]}, ["Instance 0 names input 'y'", "{x}"]),
    ],
)
def test_row_format_errors(body, fragments):
    invalid(lambda: decode(body), *fragments)


def test_row_format_with_several_inputs_needs_complete_objects():
    invalid(lambda: decode({"instances": [1.0, 2.0]}, MULTI), "plain list", "{a, b}")
    invalid(lambda: decode({"instances": [{"a": [1, 2]}]}, MULTI), "Instance 0 is missing input 'b'", "{a, b}")
    invalid(lambda: decode({"instances": [{"a": [1, 2], "b": 1}, {"a": [1, 2]}]}, MULTI),
            "Instance 1 is missing input 'b'")
    invalid(lambda: decode({"instances": [{"a": [1, 2], "b": 1, "c": 2}]}, MULTI),
            "Instance 0 names input 'c'", "expected inputs {a, b}")
    invalid(lambda: decode({"instances": [{"a": [1, 2], "b": 1.5}]}, MULTI),
            "Input 'b'", "DT_INT64", "1.5")
    invalid(lambda: decode({"instances": [{"a": [1, 2], "b": 1}, {"a": [1], "b": 2}]}, MULTI),
            "Input 'a' is ragged", "instance 1 has shape [1]")


def test_row_format_against_a_signature_without_inputs():
    invalid(lambda: decode({"instances": [{}]}, NONE), "takes no inputs")


# -- decode_predict_request: columnar format -------------------------------------------------------


def test_columnar_single_value_and_named_map():
    inputs, row = decode_predict_request({"inputs": [[1.0, 2.0]]}, HALF)
    assert row is False
    assert_array(inputs["x"], [[1.0, 2.0]], np.float32)
    assert_array(decode({"inputs": {"x": 3}})["x"], 3.0, np.float32)  # a scalar keeps shape ()
    columns = decode({"inputs": {"a": [[1, 2]], "b": 7}}, MULTI)
    assert_array(columns["a"], [[1.0, 2.0]], np.float32)
    assert_array(columns["b"], 7, np.int64)


def test_columnar_inputs_each_keep_their_own_shape():
    columns = decode({"inputs": {"a": [[1, 2], [3, 4], [5, 6]], "b": [1]}}, MULTI)
    assert columns["a"].shape == (3, 2)
    assert columns["b"].shape == (1,)


def test_columnar_b64_object_is_a_value_not_a_map():
    inputs = decode({"inputs": {"b64": b64(b"\xfe\xff")}}, TEXT)
    assert_array(inputs["s"], b"\xfe\xff", object)
    assert inputs["s"].shape == ()


def test_columnar_signature_without_inputs_accepts_an_empty_object():
    assert decode_predict_request({"inputs": {}}, NONE) == ({}, False)


def test_columnar_empty_list_takes_the_input_dtype():
    assert_array(decode_one([], DT_INT32, rows=False), np.zeros(0), np.int32)
    assert_array(decode_one([[], []], DT_BOOL, rows=False), np.zeros((2, 0)), np.bool_)
    assert_array(decode_one([], DT_STRING, rows=False), np.zeros(0), object)


def test_columnar_errors_name_the_input():
    invalid(lambda: decode({"inputs": {"a": [[1, 2]]}}, MULTI), "Missing named input 'b'", "{a, b}")
    invalid(lambda: decode({"inputs": {"a": [[1, 2]], "b": 1, "z": 0}}, MULTI), "input 'z'", "{a, b}")
    invalid(lambda: decode({"inputs": [1.0]}, MULTI), "plain value", "{a, b}")
    invalid(lambda: decode({"inputs": {}}, HALF), "Missing named input 'x'")
    invalid(lambda: decode({"inputs": [1.0]}, NONE), "plain value")
    invalid(lambda: decode({"inputs": [[1.0], [2.0, 3.0]]}), "Input 'x' is not a dense tensor")
    invalid(lambda: decode({"inputs": {"a": [[1, 2]], "b": "x"}}, MULTI), "Input 'b'", "DT_INT64", "'x'")


# -- decode_predict_request: dtypes ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "values", "expected_dtype"),
    [
        (DT_FLOAT, [1, 2.5, -3], np.float32),
        (DT_DOUBLE, [0.1, 1e300, -2], np.float64),
        (DT_HALF, [1.5, -2, 65504], np.float16),
        (DT_INT32, [1, -2, 2**31 - 1], np.int32),
        (DT_INT64, [-(2**63), 2**63 - 1, 0], np.int64),
        (DT_INT16, [-32768, 32767], np.int16),
        (DT_INT8, [-128, 127], np.int8),
        (DT_UINT8, [0, 255], np.uint8),
        (DT_UINT32, [0, 2**32 - 1], np.uint32),
        (DT_UINT64, [0, 2**64 - 1], np.uint64),
        (DT_BOOL, [True, False], np.bool_),
        (DT_COMPLEX64, [1, 2.5], np.complex64),
        (DT_COMPLEX128, [1, 2.5], np.complex128),
    ],
)
def test_numbers_convert_to_the_signature_dtype(dtype, values, expected_dtype):
    assert_array(decode_one(values, dtype), values, expected_dtype)
    assert_array(decode_one([values, values], dtype, rows=False), [values, values], expected_dtype)


def test_double_inputs_keep_full_precision():
    assert decode_one([0.1], DT_DOUBLE)[0] == 0.1


def test_non_finite_values_reach_float_inputs():
    body = parse_json_body(b'{"instances": [NaN, Infinity, -Infinity]}')
    array = decode(body)["x"]
    assert array.dtype == np.float32
    assert np.isnan(array[0]) and array[1] == np.inf and array[2] == -np.inf


@pytest.mark.parametrize(
    ("dtype", "value", "fragments"),
    [
        (DT_FLOAT, ["1.5"], ["DT_FLOAT", "the string '1.5'"]),
        (DT_FLOAT, [True, False], ["DT_FLOAT", "got true"]),
        (DT_FLOAT, [{"b64": "AA=="}], ["DT_FLOAT", '{"b64": ...}']),
        (DT_FLOAT, [[1.0, None]], ["DT_FLOAT", "null"]),
        (DT_FLOAT, [2**24], ["DT_FLOAT", "16777216", "without loss of precision"]),
        (DT_FLOAT, [1e300], ["DT_FLOAT", "1e+300", "out of range for float32"]),
        (DT_HALF, [1e6], ["DT_HALF", "out of range for float16"]),
        (DT_DOUBLE, [2**53], ["DT_DOUBLE", "without loss of precision"]),
        (DT_INT32, [1.5], ["DT_INT32", "the floating point number 1.5"]),
        (DT_INT32, [1.0], ["DT_INT32", "the floating point number 1.0"]),
        (DT_INT32, [2**31], ["DT_INT32", "2147483648", "out of range"]),
        (DT_INT64, [2**63], ["DT_INT64", "9223372036854775808", "out of range"]),
        (DT_INT64, [1, 2**70], ["DT_INT64", "out of range"]),
        (DT_INT64, ["7"], ["DT_INT64", "the string '7'"]),
        (DT_INT64, [True], ["DT_INT64", "got true"]),
        (DT_UINT8, [300], ["DT_UINT8", "300", "out of range [0, 255]"]),
        (DT_UINT8, [-1], ["DT_UINT8", "-1", "out of range"]),
        (DT_UINT8, [-1, 2**63], ["DT_UINT8", "out of range"]),
        (DT_INT8, [-129], ["DT_INT8", "-129", "out of range [-128, 127]"]),
        (DT_UINT64, [-1], ["DT_UINT64", "out of range"]),
        (DT_BOOL, [1, 0], ["DT_BOOL", "the integer 1", "only true and false"]),
        (DT_BOOL, ["true"], ["DT_BOOL", "the string 'true'"]),
        (DT_STRING, [1], ["DT_STRING", "the integer 1"]),
        (DT_STRING, [1.5], ["DT_STRING", "1.5"]),
        (DT_STRING, [True], ["DT_STRING", "true"]),
        (DT_STRING, [None], ["DT_STRING", "null"]),
        (DT_STRING, [[{"b64": 5}]], ["in instance 0", "DT_STRING", "not exactly {\"b64\""]),
    ],
)
def test_wrong_json_types_name_input_dtype_and_value(dtype, value, fragments):
    message = decode_error(value, dtype, "Input 'v'", *fragments)
    assert message.count("\n") == 0


def test_wrong_types_in_columnar_inputs():
    decode_error([[1, 2], [3, "4"]], DT_INT32, "Input 'v'", "DT_INT32", "the string '4'", rows=False)
    decode_error([[1, 2], [3, 4.5]], DT_INT32, "Input 'v'", "4.5", rows=False)
    decode_error(True, DT_FLOAT, "Input 'v'", "got true", rows=False)
    decode_error(256, DT_UINT8, "Input 'v'", "256", rows=False)


def test_deeply_nested_values_are_refused_cleanly():
    value: list = [1.0]
    for _ in range(80):
        value = [value]
    decode_error(value, DT_FLOAT, "nested deeper than 64", rows=False)
    decode_error(value, DT_STRING, "nested deeper than 64", rows=False)


# -- strings ----------------------------------------------------------------------------------------


def test_strings_become_utf8_bytes_and_b64_is_decoded():
    raw = b"\x00\xffbytes"
    inputs = decode({"instances": ["héllo", {"b64": b64(raw)}, ""]}, TEXT)
    assert_array(inputs["s"], ["héllo".encode(), raw, b""], object)
    assert all(type(x) is bytes for x in inputs["s"])


def test_nested_and_scalar_strings_keep_their_shape():
    nested = decode_one([["a", "b"], ["c", {"b64": b64(b"d")}]], DT_STRING, rows=False)
    assert_array(nested, [[b"a", b"b"], [b"c", b"d"]], object)
    rows = decode_one([[["a"]], [["b"]]], DT_STRING)
    assert rows.shape == (2, 1, 1)
    scalar = decode_one("abc", DT_STRING, rows=False)
    assert scalar.shape == () and scalar[()] == b"abc"


def test_b64_without_padding_is_accepted():
    assert decode_one([{"b64": "YQ"}], DT_STRING)[0] == b"a"


def test_string_errors():
    decode_error([{"b64": "!!!"}], DT_STRING, "Input 'v'", "not valid base64")
    decode_error([{"b64": "Y"}], DT_STRING, "not valid base64")
    decode_error([{"b64": 5}], DT_STRING, "Instance 0 names input 'b64'")  # not a b64 value, so a named instance
    decode_error([["a"], ["b", "c"]], DT_STRING, "Input 'v' is ragged", "instance 1 has shape [2]")
    decode_error([["a", "b"], ["c"]], DT_STRING, "Input 'v' is not a dense tensor", rows=False)
    decode_error([["a", ["b"]]], DT_STRING, "Input 'v'", "not a dense tensor", rows=False)
    decode_error([["a"], "b"], DT_STRING, "Input 'v'", "not a dense tensor", rows=False)
    decode_error(["a", 1], DT_STRING, "Input 'v' in instance 1", "the integer 1")


# -- shape_hints ------------------------------------------------------------------------------------


def test_shape_hints_ignore_the_batch_dimension():
    assert shape_hints({"x": np.zeros((5, 1))}, HALF) == []
    assert shape_hints({"x": np.zeros((0, 1))}, HALF) == []
    assert shape_hints({"x": np.zeros((5, 2))}, HALF) == [
        "input 'x' has shape [5, 2] but the signature declares [-1, 1]"
    ]
    assert shape_hints({"x": np.zeros(5)}, HALF) == ["input 'x' has shape [5] but the signature declares [-1, 1]"]


def test_shape_hints_skip_unknown_dims_ranks_and_aliases():
    sig = signature(a=(DT_FLOAT, (-1, -1, 3)), b=(DT_FLOAT, None), c=(DT_FLOAT, ()))
    assert shape_hints({"a": np.zeros((2, 7, 3)), "b": np.zeros((1, 2, 3, 4)), "c": np.zeros(()), "z": 1}, sig) == []
    assert shape_hints({"a": np.zeros((2, 7, 4)), "c": np.zeros(3)}, sig) == [
        "input 'a' has shape [2, 7, 4] but the signature declares [-1, -1, 3]",
        "input 'c' has shape [3] but the signature declares []",
    ]


# -- encode_predict_response --------------------------------------------------------------------------


def test_row_format_with_one_output_is_the_list_along_dim_0():
    out = encode_predict_response({"y": np.array([3.0, 3.5, 4.0], np.float32)}, True)
    assert out == b'{"predictions":[3.0,3.5,4.0]}'
    matrix = encode_predict_response({"y": np.array([[1, 2], [3, 4]], np.int32)}, True)
    assert matrix == b'{"predictions":[[1,2],[3,4]]}'


def test_row_format_with_several_outputs_is_one_object_per_instance():
    out = encode_predict_response({"a": np.array([1, 2]), "b": np.array([[1.5], [2.0]], np.float32)}, True)
    assert out == b'{"predictions":[{"a":1,"b":[1.5]},{"a":2,"b":[2.0]}]}'


def test_columnar_format():
    assert encode_predict_response({"y": np.array([[1.0]], np.float32)}, False) == b'{"outputs":[[1.0]]}'
    assert encode_predict_response({"y": np.array(2.5)}, False) == b'{"outputs":2.5}'
    out = encode_predict_response({"a": np.array(5.0), "b": np.array([True, False])}, False)
    assert out == b'{"outputs":{"a":5.0,"b":[true,false]}}'


def test_float32_is_written_at_float32_precision():
    out = encode_predict_response({"y": np.array([0.1, 1 / 3, 16777216.0], np.float32)}, True)
    assert out == b'{"predictions":[0.1,0.33333334,16777216.0]}'


@pytest.mark.parametrize("tf_dtype", sorted(t for t in NUMPY_DTYPES if NUMPY_DTYPES[t].kind in "biuf"))
def test_every_numeric_dtype_encodes_as_plain_json(tf_dtype):
    dtype = NUMPY_DTYPES[tf_dtype]
    array = np.array([[1, 0], [0, 1]], dtype=dtype)
    expected = array.tolist()
    assert json.loads(encode_predict_response({"y": array}, True)) == {"predictions": expected}
    assert json.loads(encode_predict_response({"y": array}, False)) == {"outputs": expected}
    assert json.loads(encode_predict_response({"y": array[0, 0]}, False)) == {"outputs": expected[0][0]}
    both = json.loads(encode_predict_response({"y": array, "z": array}, True))
    assert both == {"predictions": [{"y": row, "z": row} for row in expected]}


def test_large_integers_are_exact():
    out = encode_predict_response({"u": np.array([2**64 - 1], np.uint64), "i": np.array([-(2**63)])}, True)
    assert out == b'{"predictions":[{"u":18446744073709551615,"i":-9223372036854775808}]}'


def test_non_contiguous_and_empty_outputs():
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert json.loads(encode_predict_response({"y": array.T}, False)) == {"outputs": array.T.tolist()}
    assert encode_predict_response({"y": np.zeros((0, 3), np.float32)}, True) == b'{"predictions":[]}'
    assert encode_predict_response({"y": np.zeros((2, 0), np.float32)}, True) == b'{"predictions":[[],[]]}'


def test_non_finite_floats_are_written_as_literals():
    special = np.array([np.nan, np.inf, -np.inf, 1.0], np.float32)
    assert encode_predict_response({"y": special}, True) == b'{"predictions":[NaN,Infinity,-Infinity,1.0]}'
    assert encode_predict_response({"y": special}, False) == b'{"outputs":[NaN,Infinity,-Infinity,1.0]}'
    assert encode_predict_response({"y": np.array(-np.inf)}, False) == b'{"outputs":-Infinity}'
    two = encode_predict_response({"y": special.reshape(2, 2).astype(np.float64), "k": np.array([1, 2])}, True)
    assert two == b'{"predictions":[{"y":[NaN,Infinity],"k":1},{"y":[-Infinity,1.0],"k":2}]}'
    scalars = encode_predict_response({"y": special, "k": np.arange(4)}, True)
    assert scalars.startswith(b'{"predictions":[{"y":NaN,"k":0},{"y":Infinity,"k":1}')
    half = encode_predict_response({"y": np.array([np.nan, 0.5], np.float16)}, True)
    assert half == b'{"predictions":[NaN,0.5]}'


def test_non_finite_round_trip_through_parse_json_body():
    values = np.array([[np.nan, -np.inf], [np.inf, 2.5]], np.float32)
    parsed = parse_json_body(encode_predict_response({"y": values}, False))
    back = decode({"inputs": parsed["outputs"]})["x"]
    np.testing.assert_array_equal(back, values)


def test_string_outputs_text_bytes_and_fallback():
    strings = np.array([b"text", b"\xff", "wörd".encode()], dtype=object)
    out = encode_predict_response({"name": strings, "raw_bytes": strings}, True)
    out.decode("utf-8")
    assert json.loads(out)["predictions"] == [
        {"name": "text", "raw_bytes": {"b64": b64(b"text")}},
        {"name": {"b64": b64(b"\xff")}, "raw_bytes": {"b64": b64(b"\xff")}},
        {"name": "wörd", "raw_bytes": {"b64": b64("wörd".encode())}},
    ]


def test_string_outputs_keep_their_shape_and_accept_numpy_string_dtypes():
    nested = np.array([[b"a", b"b"], [b"c", b"d"]], dtype=object)
    assert encode_predict_response({"s": nested}, True) == b'{"predictions":[["a","b"],["c","d"]]}'
    assert encode_predict_response({"s": np.array(b"x", dtype=object)}, False) == b'{"outputs":"x"}'
    assert encode_predict_response({"s": np.array([b"x", b"y"])}, False) == b'{"outputs":["x","y"]}'
    assert encode_predict_response({"s": np.array(["é"])}, False) == '{"outputs":["é"]}'.encode()
    assert encode_predict_response({"s_bytes": np.array(b"\x00", dtype=object)}, False) == b'{"outputs":{"b64":"AA=="}}'


def test_row_format_output_errors():
    invalid(lambda: encode_predict_response({"a": np.array([1, 2]), "b": np.array([1])}, True),
            "Output 'b' has inconsistent batch size: 1 expecting: 2")
    invalid(lambda: encode_predict_response({"a": np.array(1.0)}, True), "Output 'a' is a scalar")
    invalid(lambda: encode_predict_response({}, True), "empty")
    invalid(lambda: encode_predict_response({"c": np.array([1j])}, False), "Output 'c'", "complex128")


# -- encode_json --------------------------------------------------------------------------------------


def test_encode_json_handles_numpy_and_non_finite_values():
    assert encode_json({"status": "ready", "n": 1}) == b'{"status":"ready","n":1}'
    assert encode_json({"a": np.array([1, 2]), "b": np.float32(0.5), "c": np.array(3)}) == b'{"a":[1,2],"b":0.5,"c":3}'
    assert encode_json({"a": np.arange(4).reshape(2, 2).T}) == b'{"a":[[0,2],[1,3]]}'
    assert encode_json({"results": [[["", float("nan")]], [["x", float("inf")]]]}) == (
        b'{"results":[[["",NaN]],[["x",Infinity]]]}'
    )
    assert encode_json({"error": "got null", "v": None}) == b'{"error":"got null","v":null}'
    assert encode_json({"r": np.array([np.nan, 1.0], np.float32)}) == b'{"r":[NaN,1.0]}'


# -- examples_from_json ---------------------------------------------------------------------------------


def parse_examples(serialized: list[bytes]) -> list:
    from tensorflow.core.example import example_pb2

    return [example_pb2.Example.FromString(s).features.feature for s in serialized]


def test_examples_types_and_context_merge():
    serialized = examples_from_json({
        "signature_name": "classify_x_to_y",
        "context": {"c": "ctx", "x": 1.0},
        "examples": [{"x": 2.0, "ids": [1, 2], "raw": {"b64": b64(b"\xff")}, "flag": True}, {}],
    })
    first, second = parse_examples(serialized)
    assert list(first["x"].float_list.value) == [2.0]  # the example's own feature wins
    assert list(first["ids"].int64_list.value) == [1, 2]
    assert list(first["raw"].bytes_list.value) == [b"\xff"]
    assert list(first["flag"].int64_list.value) == [1]
    assert list(first["c"].bytes_list.value) == [b"ctx"]
    assert list(second["x"].float_list.value) == [1.0]
    assert list(second["c"].bytes_list.value) == [b"ctx"]
    assert set(second) == {"x", "c"}


def test_examples_lists_strings_and_empty_lists():
    (features,) = parse_examples(examples_from_json({"examples": [{"s": ["a", "é"], "f": [0.5, 1.5], "e": []}]}))
    assert list(features["s"].bytes_list.value) == [b"a", "é".encode()]
    assert list(features["f"].float_list.value) == [0.5, 1.5]
    assert features["e"].WhichOneof("kind") is None


@pytest.mark.parametrize(
    ("request_body", "fragments"),
    [
        ({}, ['Missing "examples"']),
        ({"examples": {}}, ['"examples" must be a list']),
        ({"examples": []}, ['"examples" is an empty list']),
        ({"examples": [1]}, ["Example 0 must be a JSON object"]),
        ({"examples": [{}], "context": [1]}, ['"context" must be a JSON object']),
        ({"examples": [{"x": [1.0, "a"]}]}, ["Feature 'x' mixes value types", "float list"]),
        ({"examples": [{"x": [1, 2.5]}]}, ["Feature 'x' mixes value types", "int64 list"]),
        ({"examples": [{"x": [[1.0]]}]}, ["Feature 'x'", "unexpected JSON type: a list"]),
        ({"examples": [{"x": None}]}, ["Feature 'x'", "null"]),
        ({"examples": [{"x": {"y": 1}}]}, ["Feature 'x'", "base64"]),
        ({"examples": [{"x": {"b64": "!!"}}]}, ["Feature 'x'", "not valid base64"]),
        ({"examples": [{"x": 2**63}]}, ["Feature 'x'", "does not fit int64"]),
        ({"examples": [{"x": 1e300}]}, ["Feature 'x'", "float32 cannot hold"]),
        ({"examples": [{}], "context": {"c": [None]}}, ["Feature 'c'", "null"]),
    ],
)
def test_examples_errors(request_body, fragments):
    invalid(lambda: examples_from_json(request_body), *fragments)


# -- TensorProto ----------------------------------------------------------------------------------------


def sample(tf_dtype: int) -> np.ndarray:
    dtype = NUMPY_DTYPES[tf_dtype]
    if tf_dtype == DT_STRING:
        return np.array([[b"a", b"bc"], [b"", b"\xff"]], dtype=object)
    if dtype.kind == "b":
        return np.array([[True, False], [False, True]])
    if dtype.kind == "c":
        return np.array([[1 + 2j, 3 - 1j], [0, 1j]], dtype=dtype)
    if dtype.kind == "f":
        return np.array([[1.5, -2.0], [np.inf, 0.25]], dtype=dtype)
    info = np.iinfo(dtype)
    return np.array([[info.min, info.max], [0, 1]], dtype=dtype)


TYPED_FIELDS = {
    DT_FLOAT: "float_val", DT_DOUBLE: "double_val", DT_INT32: "int_val", DT_UINT8: "int_val",
    DT_INT16: "int_val", DT_INT8: "int_val", DT_STRING: "string_val", DT_COMPLEX64: "scomplex_val",
    DT_INT64: "int64_val", DT_BOOL: "bool_val", DT_COMPLEX128: "dcomplex_val", DT_HALF: "half_val",
    DT_UINT32: "uint32_val", DT_UINT64: "uint64_val",
}


def typed_proto(array: np.ndarray, tf_dtype: int, shape: tuple[int, ...] | None = None):
    """A TensorProto written the way clients that avoid tensor_content do: one typed repeated field."""
    from tensorflow.core.framework import tensor_pb2

    proto = tensor_pb2.TensorProto(dtype=tf_dtype)
    for size in array.shape if shape is None else shape:
        proto.tensor_shape.dim.add(size=size)
    flat = array.reshape(-1)
    if tf_dtype == DT_HALF:
        values = flat.view(np.uint16).tolist()
    elif flat.dtype.kind == "c":
        values = np.stack([flat.real, flat.imag], axis=-1).reshape(-1).tolist()
    else:
        values = flat.tolist()
    getattr(proto, TYPED_FIELDS[tf_dtype]).extend(values)
    return proto


def test_typed_field_table_covers_every_dtype():
    assert set(TYPED_FIELDS) == set(NUMPY_DTYPES)


@pytest.mark.parametrize("tf_dtype", sorted(NUMPY_DTYPES))
def test_tensor_content_round_trip_for_every_dtype(tf_dtype):
    array = sample(tf_dtype)
    proto = numpy_to_tensor_proto(array)
    assert proto.dtype == tf_dtype
    assert [d.size for d in proto.tensor_shape.dim] == [2, 2]
    if tf_dtype == DT_STRING:
        assert list(proto.string_val) == [b"a", b"bc", b"", b"\xff"]
        assert not proto.tensor_content
    else:
        assert proto.tensor_content == array.astype(array.dtype.newbyteorder("<")).tobytes()
    back = tensor_proto_to_numpy(proto)
    assert_array(back, array, NUMPY_DTYPES[tf_dtype])


@pytest.mark.parametrize("tf_dtype", sorted(NUMPY_DTYPES))
def test_typed_fields_for_every_dtype_match_tensorflow(tf_dtype):
    import tensorflow as tf

    array = sample(tf_dtype)
    proto = typed_proto(array, tf_dtype)
    assert not proto.tensor_content
    back = tensor_proto_to_numpy(proto)
    assert_array(back, array, NUMPY_DTYPES[tf_dtype])
    reference = tf.make_ndarray(proto)
    np.testing.assert_array_equal(back, reference.astype(object) if tf_dtype == DT_STRING else reference)


@pytest.mark.parametrize("tf_dtype", sorted(NUMPY_DTYPES))
def test_single_typed_value_is_broadcast_to_the_shape(tf_dtype):
    array = sample(tf_dtype)
    value = array.reshape(-1)[1:2]
    back = tensor_proto_to_numpy(typed_proto(value, tf_dtype, shape=(2, 3)))
    assert_array(back, np.full((2, 3), value[0], dtype=NUMPY_DTYPES[tf_dtype]), NUMPY_DTYPES[tf_dtype])


@pytest.mark.parametrize("tf_dtype", sorted(NUMPY_DTYPES))
def test_no_typed_values_means_default_values(tf_dtype):
    back = tensor_proto_to_numpy(typed_proto(sample(tf_dtype)[:0, :0], tf_dtype, shape=(2,)))
    expected = np.full(2, b"", dtype=object) if tf_dtype == DT_STRING else np.zeros(2, NUMPY_DTYPES[tf_dtype])
    assert_array(back, expected, NUMPY_DTYPES[tf_dtype])


def test_fewer_typed_values_are_padded_with_the_last_one_like_tensorflow():
    import tensorflow as tf

    proto = typed_proto(np.array([1.0, 2.0], np.float32), DT_FLOAT, shape=(2, 2))
    back = tensor_proto_to_numpy(proto)
    assert_array(back, [[1.0, 2.0], [2.0, 2.0]], np.float32)
    np.testing.assert_array_equal(back, tf.make_ndarray(proto))


def test_protos_from_tensorflow_decode_exactly():
    import tensorflow as tf

    for value, dtype in [([[1.0, 2.0]], tf.float32), ([7], tf.int64), (np.array([1.5, 2.0], np.float16), None),
                         ([b"x", b"y"], None), (3, tf.int32), ([True, False], tf.bool)]:
        proto = tf.make_tensor_proto(value, dtype=dtype)
        back = tensor_proto_to_numpy(proto)
        reference = tf.make_ndarray(proto)
        assert back.shape == reference.shape
        np.testing.assert_array_equal(back, reference.astype(object) if reference.dtype.kind == "O" else reference)
    broadcast = tf.make_tensor_proto(7, dtype=tf.int64, shape=[3])
    assert_array(tensor_proto_to_numpy(broadcast), [7, 7, 7], np.int64)


def test_numpy_to_tensor_proto_is_readable_by_tensorflow():
    import tensorflow as tf

    for tf_dtype in NUMPY_DTYPES:
        array = sample(tf_dtype)
        reference = tf.make_ndarray(numpy_to_tensor_proto(array))
        np.testing.assert_array_equal(reference.astype(object) if tf_dtype == DT_STRING else reference, array)


def test_numpy_to_tensor_proto_conversions():
    proto = numpy_to_tensor_proto(np.array([1, 2]), DT_FLOAT)
    assert proto.dtype == DT_FLOAT
    assert_array(tensor_proto_to_numpy(proto), [1.0, 2.0], np.float32)
    big_endian = np.array([1.5, 2.5], dtype=">f8")
    assert_array(tensor_proto_to_numpy(numpy_to_tensor_proto(big_endian)), [1.5, 2.5], np.float64)
    strided = np.arange(6, dtype=np.int32).reshape(2, 3).T
    assert_array(tensor_proto_to_numpy(numpy_to_tensor_proto(strided)), strided, np.int32)
    text = numpy_to_tensor_proto(np.array(["é", "b"]))
    assert text.dtype == DT_STRING and list(text.string_val) == ["é".encode(), b"b"]
    scalar = numpy_to_tensor_proto(np.float32(3.0))
    assert len(scalar.tensor_shape.dim) == 0
    assert_array(tensor_proto_to_numpy(scalar), 3.0, np.float32)
    invalid(lambda: numpy_to_tensor_proto(np.array(["x"]), DT_FLOAT), "DT_FLOAT")
    invalid(lambda: numpy_to_tensor_proto(np.array([1], dtype="datetime64[s]")), "no TensorFlow equivalent")


# Tensor::AsProtoField's field per dtype, from TensorFlow's tensor.cc (ProtoHelper<T>), written out here
# independently of the implementation's table: bfloat16 and half put raw bits in half_val, the narrow
# integers (uint16 too, though no request input may be uint16) widen into int_val.
AS_PROTO_FIELD = {**TYPED_FIELDS, "uint16": "int_val", "bfloat16": "half_val"}


def output_samples() -> dict:
    import ml_dtypes

    samples = {tf_dtype: sample(tf_dtype) for tf_dtype in NUMPY_DTYPES}
    samples["uint16"] = np.array([[0, 65535], [1, 300]], np.uint16)
    samples["bfloat16"] = np.array([[1.5, -2.0], [np.inf, 0.25]], dtype=ml_dtypes.bfloat16)
    return samples


@pytest.mark.parametrize("key", list(output_samples()), ids=str)
def test_typed_fields_are_the_ones_tf_serving_answers_in_and_round_trip_like_tensorflow_s_own(key):
    import tensorflow as tf

    array = output_samples()[key]
    proto = numpy_to_tensor_proto(array, tensor_content=False)
    assert not proto.tensor_content
    filled = {field.name for field, _ in proto.ListFields()} - {"dtype", "tensor_shape"}
    assert filled == {AS_PROTO_FIELD[key]}
    assert [d.size for d in proto.tensor_shape.dim] == [2, 2]
    reference = tf.make_tensor_proto(array)
    assert proto.dtype == reference.dtype
    ours, theirs = tf.make_ndarray(proto), tf.make_ndarray(reference)
    assert (ours.dtype, ours.shape) == (theirs.dtype, theirs.shape)
    np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(ours.astype(object) if key == DT_STRING else ours, array)


def test_typed_fields_hold_exactly_what_protobuf_itself_writes():
    """The floats, doubles, complex numbers and bools written as raw wire bytes serialize byte for byte
    like values added one by one through protobuf."""
    from tensorflow.core.framework import tensor_pb2

    values = {
        DT_FLOAT: np.float32([1.5, -0.0, np.nan, np.inf, 1e-45, 3.4e38]),
        DT_DOUBLE: np.float64([1.5, -0.0, np.nan, -np.inf, 5e-324]),
        DT_COMPLEX64: np.complex64([1 + 2j, -3.5j]),
        DT_COMPLEX128: np.complex128([1e300 - 1j]),
        DT_BOOL: np.array([True, False, True]),
    }
    for tf_dtype, array in values.items():
        reference = tensor_pb2.TensorProto(dtype=tf_dtype)
        reference.tensor_shape.dim.add(size=array.size)
        flat = np.stack([array.real, array.imag], -1).reshape(-1) if array.dtype.kind == "c" else array
        getattr(reference, TYPED_FIELDS[tf_dtype]).extend(flat.tolist())
        assert numpy_to_tensor_proto(array, tensor_content=False).SerializeToString() == \
            reference.SerializeToString(), tf_dtype


def test_typed_fields_raw_bits_scalars_empty_tensors_and_conversions():
    import ml_dtypes

    half = numpy_to_tensor_proto(np.float16([1.0, -2.0]), tensor_content=False)
    assert list(half.half_val) == [0x3C00, 0xC000]  # raw bits, non-negative, in an int32 field
    bfloat = numpy_to_tensor_proto(np.array([1.0], ml_dtypes.bfloat16), tensor_content=False)
    assert list(bfloat.half_val) == [0x3F80]
    assert list(numpy_to_tensor_proto(np.int8([-128, 127]), tensor_content=False).int_val) == [-128, 127]
    assert list(numpy_to_tensor_proto(np.uint64([2**64 - 1]), tensor_content=False).uint64_val) == [2**64 - 1]
    scalar = numpy_to_tensor_proto(np.float32(3.0), tensor_content=False)
    assert list(scalar.float_val) == [3.0] and scalar.HasField("tensor_shape") and not scalar.tensor_shape.dim
    empty = numpy_to_tensor_proto(np.zeros((0, 3), np.float32), tensor_content=False)
    assert [d.size for d in empty.tensor_shape.dim] == [0, 3]
    assert {field.name for field, _ in empty.ListFields()} == {"dtype", "tensor_shape"}  # no values, as TF
    cast = numpy_to_tensor_proto(np.array([1, 2]), DT_FLOAT, tensor_content=False)
    assert cast.dtype == DT_FLOAT and list(cast.float_val) == [1.0, 2.0]
    big_endian = numpy_to_tensor_proto(np.array([1.5, 2.5], ">f8"), tensor_content=False)
    assert list(big_endian.double_val) == [1.5, 2.5]
    strided = np.arange(6, dtype=np.int32).reshape(2, 3).T
    assert list(numpy_to_tensor_proto(strided, tensor_content=False).int_val) == strided.reshape(-1).tolist()
    odd_bools = np.array([0, 1, 2, 255], np.uint8).view(np.bool_)  # a bool buffer holding non-0/1 bytes
    assert list(numpy_to_tensor_proto(odd_bools, tensor_content=False).bool_val) == [False, True, True, True]
    invalid(lambda: numpy_to_tensor_proto(np.array(["x"]), DT_FLOAT, tensor_content=False), "DT_FLOAT")
    invalid(lambda: numpy_to_tensor_proto(np.float32([1.0]), 14, tensor_content=False), "DT_BFLOAT16")


def test_numpy_to_tensor_proto_fills_a_given_message_in_place():
    from tensorflow_serving.apis import predict_pb2

    response = predict_pb2.PredictResponse()
    response.outputs["y"].string_val.append(b"left over")
    out = numpy_to_tensor_proto(np.float32([[1.0, 2.0]]), tensor_content=False, out=response.outputs["y"])
    assert out is response.outputs["y"]
    assert list(out.float_val) == [1.0, 2.0] and not out.string_val  # cleared first, as AsProtoField does
    numpy_to_tensor_proto(np.float32([4.0]), out=response.outputs["y"])
    assert not response.outputs["y"].float_val
    assert response.outputs["y"].tensor_content == np.float32([4.0]).tobytes()


def test_tensor_proto_errors():
    from tensorflow.core.framework import tensor_pb2

    short = numpy_to_tensor_proto(np.zeros(4, np.float32))
    short.tensor_content = short.tensor_content[:-1]
    invalid(lambda: tensor_proto_to_numpy(short), "tensor_content holds 15 bytes", "needs 16")
    too_many = typed_proto(np.array([1, 2, 3], np.int64), DT_INT64, shape=(2,))
    invalid(lambda: tensor_proto_to_numpy(too_many), "3 values in int64_val", "holds 2")
    invalid(lambda: tensor_proto_to_numpy(typed_proto(np.array([300]), DT_UINT8)), "300", "DT_UINT8")
    invalid(lambda: tensor_proto_to_numpy(tensor_pb2.TensorProto(dtype=14, float_val=[1.0])), "DT_BFLOAT16")
    invalid(lambda: tensor_proto_to_numpy(tensor_pb2.TensorProto(dtype=20)), "not supported")
    unknown = tensor_pb2.TensorProto(dtype=DT_FLOAT)
    unknown.tensor_shape.unknown_rank = True
    invalid(lambda: tensor_proto_to_numpy(unknown), "unknown_rank")
    negative = typed_proto(np.array([1.0], np.float32), DT_FLOAT, shape=(-1,))
    invalid(lambda: tensor_proto_to_numpy(negative), "negative")
    odd = tensor_pb2.TensorProto(dtype=DT_COMPLEX64, scomplex_val=[1.0, 2.0, 3.0])
    odd.tensor_shape.dim.add(size=2)
    invalid(lambda: tensor_proto_to_numpy(odd), "odd number")


def test_decode_tensor_protos_checks_aliases_and_dtypes():
    good = {"x": numpy_to_tensor_proto(np.array([[1.0]], np.float32))}
    assert_array(decode_tensor_protos(good, HALF)["x"], [[1.0]], np.float32)
    wrong = {"x": numpy_to_tensor_proto(np.array([1]))}
    invalid(lambda: decode_tensor_protos(wrong, HALF), "Input 'x' expects DT_FLOAT", "DT_INT64")
    invalid(lambda: decode_tensor_protos({"z": good["x"], **good}, HALF),
            "input tensor alias not found in signature: z", "{x}")
    invalid(lambda: decode_tensor_protos({}, HALF), "Missing input 'x'", "{x}")
    broken = numpy_to_tensor_proto(np.zeros(2, np.float32))
    broken.tensor_content = b"123"
    invalid(lambda: decode_tensor_protos({"x": broken}, HALF), "Input 'x':", "tensor_content")


def test_decode_tensor_protos_several_inputs():
    protos = {"a": numpy_to_tensor_proto(np.ones((1, 2), np.float32)), "b": numpy_to_tensor_proto(np.array([4]))}
    inputs = decode_tensor_protos(protos, MULTI)
    assert_array(inputs["a"], [[1.0, 1.0]], np.float32)
    assert_array(inputs["b"], [4], np.int64)
    assert decode_tensor_protos({}, NONE) == {}


def test_a_named_instance_among_plain_strings_is_a_type_error():
    invalid(lambda: decode({"instances": ["a", {"s": "b"}]}, TEXT), "Input 's' in instance 1", "a JSON object")


def test_integers_beyond_64_bits_parse_as_floats_and_are_refused_for_integer_inputs():
    body = parse_json_body(b'{"instances": [1, 18446744073709551616]}')  # as in rapidjson, a double
    decode_error(body["instances"], DT_UINT64, "in instance 1", "floating point number 1.8446744073709552e+19")
