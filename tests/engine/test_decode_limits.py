"""What one request may make the engine allocate, and how fast a hostile one is refused.

TensorProto shapes and JSON lists are the client's claims; the decoders count the array a claim
implies against the request's :class:`DecodeLimits` before numpy makes it, never let numpy's type
discovery turn a list of numbers with one string in it into a string array, keep no request-sized
cache, and decode large REST bodies in worker processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import pickle
import threading
import time
import tracemalloc

import numpy as np
import orjson
import pytest
from tensorflow.core.framework import tensor_pb2

from jupyter_tfserve.engine.codecs import decode_workers, json_body, json_predict, tensor_proto
from jupyter_tfserve.engine.codecs.decode_workers import DecodeWorkers
from jupyter_tfserve.engine.codecs.json_body import parse_predict_body
from jupyter_tfserve.engine.codecs.json_predict import decode_predict_request
from jupyter_tfserve.engine.codecs.limits import DecodeBudget, DecodeLimits
from jupyter_tfserve.engine.codecs.tensor_proto import (
    convert_tensor_protos,
    decode_tensor_protos,
    tensor_proto_to_numpy,
)
from jupyter_tfserve.engine.errors import Code, ServingError, redact_paths
from jupyter_tfserve.engine.signature import (
    DT_BOOL,
    DT_COMPLEX64,
    DT_DOUBLE,
    DT_FLOAT,
    DT_HALF,
    DT_INT8,
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


def signature(**inputs: int) -> SignatureSpec:
    return SignatureSpec("serving_default", "tensorflow/serving/predict",
                         {key: TensorSpec(key, f"{key}:0", dtype, None) for key, dtype in inputs.items()})


FLOAT = signature(x=DT_FLOAT)


def proto(tf_dtype: int, shape, field: str | None = None, values=(), content: bytes = b"") -> tensor_pb2.TensorProto:
    tensor = tensor_pb2.TensorProto(dtype=tf_dtype, tensor_content=content)
    for size in shape:
        tensor.tensor_shape.dim.add(size=size)
    if field is not None:
        getattr(tensor, field).extend(values)
    return tensor


def decode(body: bytes, spec: SignatureSpec, limits: DecodeLimits | None = None):
    """As the REST door decodes: the parsed body, with a budget that knows the body's size and text."""
    return decode_predict_request(parse_predict_body(body), spec, DecodeBudget(limits, len(body), body))


def refused(call, code: Code, *fragments: str) -> ServingError:
    with pytest.raises(ServingError) as raised:
        call()
    assert raised.value.code is code, raised.value
    for fragment in fragments:
        assert fragment in raised.value.message, raised.value.message
    return raised.value


def peak_allocation(call) -> int:
    """Bytes at the peak of Python's (and numpy's) allocations during ``call``, which may raise."""
    tracemalloc.start()
    try:
        with contextlib.suppress(ServingError):
            call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# -- TensorProto shape claims ----------------------------------------------------------------------------


@pytest.mark.parametrize(("tf_dtype", "shape", "field", "values"), [
    (DT_FLOAT, [2**29], "float_val", [1.0]),             # 2 GiB from one value
    (DT_FLOAT, [2**40], "float_val", [1.0]),             # numpy's MemoryError before, answered UNKNOWN
    (DT_FLOAT, [2**29], None, []),                       # zeros: no values at all
    (DT_INT64, [2**16, 2**16], "int64_val", [7]),
    (DT_STRING, [2**28], None, []),                      # 2 GiB of pointers to b""
    (DT_STRING, [2**28], "string_val", [b"x"]),
    (DT_BOOL, [2**33], "bool_val", [True]),
    (DT_FLOAT, [2**62, 2**62, 2**62], "float_val", [1.0]),  # far beyond int64
])
def test_a_claimed_shape_beyond_the_limit_is_refused_before_numpy_allocates(tf_dtype, shape, field, values):
    tensor = proto(tf_dtype, shape, field, values)
    error = refused(lambda: tensor_proto_to_numpy(tensor), Code.RESOURCE_EXHAUSTED, "bytes", str(2**26))
    assert "--max_decoded_request_bytes" in error.message
    assert peak_allocation(lambda: tensor_proto_to_numpy(tensor)) < 1 << 20


def test_shapes_numpy_cannot_hold_are_invalid_arguments():
    refused(lambda: tensor_proto_to_numpy(proto(DT_FLOAT, [1] * 65, "float_val", [1.0])),
            Code.INVALID_ARGUMENT, "65 dimensions")
    refused(lambda: tensor_proto_to_numpy(proto(DT_FLOAT, [0, 2**62, 2**62])), Code.INVALID_ARGUMENT,
            "too large")
    assert tensor_proto_to_numpy(proto(DT_FLOAT, [0, 2**40])).shape == (0, 2**40)


def test_within_the_floor_tensorflow_padding_still_holds():
    padded = tensor_proto_to_numpy(proto(DT_FLOAT, [1024, 1024], "float_val", [1.5, 2.5]))  # 4 MiB
    assert padded.shape == (1024, 1024) and padded[0, 0] == 1.5 and (padded.reshape(-1)[1:] == 2.5).all()
    zeros = tensor_proto_to_numpy(proto(DT_STRING, [1000]))
    assert zeros.shape == (1000,) and set(zeros.tolist()) == {b""}


def test_the_limit_grows_with_what_the_request_sent_up_to_the_hard_cap():
    limits = DecodeLimits(max_bytes=1 << 20, floor_bytes=1 << 10)
    content = np.arange(4096, dtype=np.float32).tobytes()  # 16 KiB sent: may decode to 128 KiB
    sent = proto(DT_FLOAT, [4096], content=content)
    assert tensor_proto_to_numpy(sent, DecodeBudget(limits, sent.ByteSize)).sum() == sum(range(4096))
    claimed = proto(DT_FLOAT, [4096], "float_val", [1.0])  # 16 KiB claimed from 12 bytes sent
    refused(lambda: tensor_proto_to_numpy(claimed, DecodeBudget(limits, claimed.ByteSize)), Code.RESOURCE_EXHAUSTED)
    big = proto(DT_FLOAT, [2**19], content=bytes(2**21))  # 2 MiB sent, over the 1 MiB cap
    refused(lambda: tensor_proto_to_numpy(big, DecodeBudget(limits, big.ByteSize)), Code.RESOURCE_EXHAUSTED,
            str(1 << 20))
    assert DecodeLimits().limit_for(1 << 30) == 4 << 30 and DecodeLimits().limit_for(10) == 64 << 20


def test_the_budget_is_the_requests_not_each_tensors():
    half = 2**23  # 32 MiB of float32 each: either alone fits the 64 MiB floor, both do not
    protos = {"a": proto(DT_FLOAT, [half], "float_val", [1.0]), "b": proto(DT_FLOAT, [half + 1], "float_val", [1.0])}
    refused(lambda: decode_tensor_protos(protos, signature(a=DT_FLOAT, b=DT_FLOAT)), Code.RESOURCE_EXHAUSTED,
            "Input 'b'")


def test_memory_error_is_resource_exhausted(monkeypatch):
    def exhausted(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(tensor_proto, "_typed_values", exhausted)
    tensor = proto(DT_FLOAT, [4], "float_val", [1.0, 2.0, 3.0, 4.0])
    refused(lambda: tensor_proto_to_numpy(tensor), Code.RESOURCE_EXHAUSTED, "out of memory")
    refused(lambda: decode_tensor_protos({"x": tensor}, FLOAT), Code.RESOURCE_EXHAUSTED, "Input 'x'", "memory")
    monkeypatch.setattr(json_predict, "_json_to_array", exhausted)
    refused(lambda: decode_predict_request({"instances": [1.0]}, FLOAT), Code.RESOURCE_EXHAUSTED, "memory")


# -- typed fields read in bulk -----------------------------------------------------------------------------


RNG = np.random.default_rng(7)
COUNT = (1 << 16) * 2 + 123  # past the wire-read threshold and over two slices of the stepped copy


@pytest.mark.parametrize(("tf_dtype", "field", "values"), [
    (DT_FLOAT, "float_val", RNG.random(COUNT).astype(np.float32)),
    (DT_DOUBLE, "double_val", RNG.random(COUNT)),
    (DT_INT32, "int_val", RNG.integers(-2**31, 2**31, COUNT)),
    (DT_INT8, "int_val", RNG.integers(-128, 128, COUNT)),
    (DT_UINT8, "int_val", RNG.integers(0, 256, COUNT)),
    (DT_INT64, "int64_val", np.concatenate([RNG.integers(-2**63, 2**63 - 1, COUNT, dtype=np.int64),
                                            np.array([-2**63, 2**63 - 1, 0])])),
    (DT_UINT32, "uint32_val", RNG.integers(0, 2**32, COUNT, dtype=np.uint64)),
    (DT_UINT64, "uint64_val", np.concatenate([RNG.integers(0, 2**64 - 1, COUNT, dtype=np.uint64),
                                              np.array([2**64 - 1], dtype=np.uint64)])),
    (DT_BOOL, "bool_val", RNG.integers(0, 2, COUNT).astype(bool)),
    (DT_HALF, "half_val", RNG.random(COUNT).astype(np.float16).view(np.uint16)),
])
def test_large_typed_fields_decode_exactly(tf_dtype, field, values):
    decoded = tensor_proto_to_numpy(proto(tf_dtype, [len(values)], field, values.tolist()))
    expected = values.view(np.float16) if field == "half_val" else values.astype(NUMPY_DTYPES[tf_dtype])
    assert decoded.dtype == NUMPY_DTYPES[tf_dtype]
    assert np.array_equal(decoded, expected)


def test_large_complex_and_string_fields_decode_exactly():
    parts = RNG.random(2 * COUNT).astype(np.float32)
    decoded = tensor_proto_to_numpy(proto(DT_COMPLEX64, [COUNT], "scomplex_val", parts.tolist()))
    assert np.array_equal(decoded, parts.view(np.complex64))
    texts = [f"t{i}".encode() for i in range(COUNT)]
    assert tensor_proto_to_numpy(proto(DT_STRING, [COUNT], "string_val", texts)).tolist() == texts


def test_reading_a_large_float_field_costs_no_python_number_per_value():
    tensor = proto(DT_FLOAT, [2**20], "float_val", np.ones(2**20, dtype=np.float32).tolist())
    started = time.perf_counter()
    assert tensor_proto_to_numpy(tensor).sum() == 2**20
    wire = time.perf_counter() - started
    started = time.perf_counter()
    np.fromiter(tensor.float_val, dtype=np.float32, count=2**20)
    assert wire < (time.perf_counter() - started) / 2


def test_conversion_ahead_of_the_signature_matches_decoding_with_it():
    protos = {"x": proto(DT_FLOAT, [3], "float_val", [1.0, 2.0, 3.0]),
              "bad": proto(DT_FLOAT, [2], content=b"123")}
    converted = convert_tensor_protos(protos, DecodeBudget())
    assert isinstance(converted["bad"], ServingError) and "tensor_content holds 3 bytes" in converted["bad"].message
    spec = signature(x=DT_FLOAT, bad=DT_FLOAT)
    with pytest.raises(ServingError) as ahead:
        decode_tensor_protos(protos, spec, converted=converted)
    with pytest.raises(ServingError) as inline:
        decode_tensor_protos(protos, spec)
    assert ahead.value.message == inline.value.message == converted["bad"].message
    assert inline.value.message.startswith("Input 'bad': tensor_content holds 3 bytes")
    only = {"x": protos["x"]}
    assert decode_tensor_protos(only, FLOAT, converted=convert_tensor_protos(only, DecodeBudget()))["x"].tolist() == [
        1.0, 2.0, 3.0]
    assert tensor_proto.tensor_protos_size_hint(protos) == 3 * 4 + 3


# -- JSON: no string array from a list of numbers ------------------------------------------------------


def test_one_long_string_among_numbers_makes_no_string_array():
    """8000 zeros and a 40000-character string: a 56 KB body that numpy turned into a 1.3 GB array."""
    body = orjson.dumps({"instances": [0] * 8000 + ["x" * 40000]})
    call = lambda: decode(body, FLOAT)  # noqa: E731
    refused(call, Code.INVALID_ARGUMENT, "instance 8000", "DT_FLOAT", "the string 'xxxx")
    assert peak_allocation(call) < 8 << 20


@pytest.mark.parametrize("body", [
    {"instances": [[0.5] * 100] * 99 + [[0.5] * 99 + ["x" * 100000]]},
    {"inputs": {"x": [0] * 5000 + ["x" * 100000]}},
    {"instances": [{"x": 1.0}] * 5000 + [{"x": "x" * 100000}]},
    {"instances": [0] * 5000 + ["x" * 100000], "signature_name": "\u0022\u0022"},  # quotes written as \u0022
    {"instances": [0] * 5000 + ["x" * 100000], "other": ["a"]},
])
def test_strings_hidden_in_numeric_inputs_are_found_first(body):
    text = orjson.dumps(body).replace(b'"\\"\\""', b'"\\u0022\\u0022"')
    call = lambda: decode(text, FLOAT)  # noqa: E731
    refused(call, Code.INVALID_ARGUMENT, "DT_FLOAT", "string")
    assert peak_allocation(call) < 16 << 20


def test_a_string_input_beside_a_numeric_one_still_decodes():
    spec = signature(text=DT_STRING, x=DT_FLOAT)
    body = orjson.dumps({"instances": [{"text": "a", "x": 1.0}, {"text": "b", "x": 2.0}]})
    inputs, rows = decode(body, spec)
    assert rows and inputs["text"].tolist() == [b"a", b"b"] and inputs["x"].tolist() == [1.0, 2.0]
    bad = orjson.dumps({"inputs": {"text": ["a"], "x": [1.0, "2"]}})
    refused(lambda: decode(bad, spec), Code.INVALID_ARGUMENT,
            "Input 'x' expects DT_FLOAT values but got the string '2'")


def test_a_40mb_hostile_list_ends_the_walk_without_a_python_step_per_value():
    body = orjson.dumps({"instances": [0] * 4_000_000 + ["x"]})
    started = time.perf_counter()
    refused(lambda: decode(body, FLOAT), Code.INVALID_ARGUMENT,
            "instance 4000000", "the string 'x'")
    assert time.perf_counter() - started < 5


def test_wrong_types_are_reported_before_values_out_of_range():
    body = b'{"instances": [1099511627776, ' + b"1, " * 1000 + b"null]}"  # 2**40 first, for an int32 input
    refused(lambda: decode(body, signature(x=DT_INT32)), Code.INVALID_ARGUMENT,
            "instance 1001", "null")
    # -1 and 2**63 in one tensor: numpy makes an object array; the range walk clears whole rows in C.
    rows = orjson.dumps({"instances": [[1] * 1000] * 300 + [[-1] * 999 + [2**63]]})
    started = time.perf_counter()
    refused(lambda: decode(rows, signature(x=DT_INT64)), Code.INVALID_ARGUMENT,
            "instance 300", "9223372036854775808", "out of range")
    assert time.perf_counter() - started < 2


def test_json_tensors_count_against_the_budget():
    limits = DecodeLimits(max_bytes=4096, floor_bytes=1024)
    body = orjson.dumps({"instances": [1.5] * 2000})  # 8000 bytes of float32 from a 10 KB body
    refused(lambda: decode(body, FLOAT, limits), Code.RESOURCE_EXHAUSTED, "Input 'x'")
    texts = orjson.dumps({"instances": ["abcdefgh"] * 400})
    refused(lambda: decode(texts, signature(x=DT_STRING), limits), Code.RESOURCE_EXHAUSTED)


# -- no request-sized caches -------------------------------------------------------------------------------


def test_large_dense_shapes_are_not_cached():
    json_body._dense_structure_cached.cache_clear()
    for size in range(100_000, 100_010):  # ten 800 KB bodies, each its own shape
        body = orjson.dumps({"instances": [1.5] * size})
        inputs, _ = decode(body, FLOAT)
        assert inputs["x"].shape == (size,)
    assert json_body._dense_structure_cached.cache_info().currsize == 0
    decode(orjson.dumps({"instances": [[1.5] * 28] * 28}), FLOAT)
    assert json_body._dense_structure_cached.cache_info().currsize == 1  # small shapes are still cached


def test_a_large_body_gets_a_simdjson_parser_of_its_own(monkeypatch):
    """simdjson keeps the capacity of the largest document it parsed: ~500 MB after one 40 MB body."""
    made = []
    real = decode_workers.simdjson.Parser

    def counting():
        made.append(1)
        return real()

    parse_predict_body(orjson.dumps({"instances": [1.5] * 1000}))  # the thread's parser exists
    monkeypatch.setattr(decode_workers.simdjson, "Parser", counting)
    parse_predict_body(orjson.dumps({"instances": [1.5] * 1000}))
    assert not made
    parse_predict_body(orjson.dumps({"instances": [1.5] * 1_200_000}))  # 4.8 MB
    assert len(made) == 1


# -- errors travel between processes and out to share tokens ------------------------------------------------


def test_serving_errors_keep_their_code_through_pickle():
    error = pickle.loads(pickle.dumps(ServingError(Code.RESOURCE_EXHAUSTED, "too big")))
    assert error.code is Code.RESOURCE_EXHAUSTED and error.message == "too big"


@pytest.mark.parametrize(("message", "expected"), [
    ("Version directory /home/ann/models/m/1 is incomplete", "Version directory .../1 is incomplete"),
    ("/srv/x/assets/vocab.txt; No such file or directory [[{{node a/ReadFile}}]]",
     ".../vocab.txt; No such file or directory [[{{node a/ReadFile}}]]"),
    ("open('/a/b/c'): failed", "open('.../c'): failed"),
    ("see http://example.com/a/b, dense/MatMul, ./rel/path, ~/notes", "see http://example.com/a/b, dense/MatMul, "
                                                                       "./rel/path, ~/notes"),
    ("Servable not found for request: Latest(m)", "Servable not found for request: Latest(m)"),
])
def test_redact_paths_keeps_only_the_last_component(message, expected):
    assert redact_paths(message) == expected


# -- large bodies in worker processes ------------------------------------------------------------------------


SIGNATURES = {"serving_default": FLOAT, "strings": signature(text=DT_STRING),
              "multi": signature(a=DT_FLOAT, b=DT_INT64)}


def run(coroutine):
    return asyncio.run(coroutine)


def test_a_worker_decodes_as_the_engine_would():
    async def main():
        workers = DecodeWorkers(max_workers=1)
        try:
            floats = np.linspace(0, 1, 100_000).tolist()
            decoded = await workers.decode(orjson.dumps({"instances": floats}), SIGNATURES)
            assert decoded.signature_name == "" and decoded.signature == FLOAT and decoded.row_format
            assert np.array_equal(decoded.inputs["x"], np.array(floats, dtype=np.float32))
            texts = [f"w{i}" * (i % 5) for i in range(50_000)]
            decoded = await workers.decode(orjson.dumps({"signature_name": "strings", "inputs": texts}), SIGNATURES)
            assert not decoded.row_format and decoded.inputs["text"].tolist() == [t.encode() for t in texts]
            decoded = await workers.decode(orjson.dumps({"signature_name": "multi", "instances": [
                {"a": 1.0, "b": 2}, {"a": 3.0, "b": "x"}]}), SIGNATURES)
            assert decoded.inputs is None and decoded.error.code is Code.INVALID_ARGUMENT
            assert "Input 'b'" in decoded.error.message
            decoded = await workers.decode(orjson.dumps({"signature_name": "other", "instances": [1]}), SIGNATURES)
            assert decoded.signature is None and decoded.inputs is None and decoded.signature_name == "other"
            with pytest.raises(ServingError) as raised:
                await workers.decode(b'{"instances": [1, 2,', SIGNATURES)
            assert raised.value.code is Code.INVALID_ARGUMENT and "JSON Parse error" in raised.value.message
            with pytest.raises(ServingError) as raised:
                await workers.decode(b'{"signature_name": 7, "instances": [1]}', SIGNATURES)
            assert "'signature_name' attribute must be a string" in raised.value.message
            assert workers.started == 1  # one worker served them all
        finally:
            await workers.aclose()

    run(main())


def test_a_worker_that_dies_is_replaced_and_a_cancelled_one_is_killed():
    async def main():
        workers = DecodeWorkers(max_workers=1)
        try:
            body = orjson.dumps({"instances": [1.5] * 100_000})
            await workers.decode(body, SIGNATURES)
            (worker,) = workers._idle
            worker.process.kill()
            with pytest.raises(ServingError) as raised:
                await workers.decode(body, SIGNATURES)
            assert raised.value.code is Code.RESOURCE_EXHAUSTED and "stopped" in raised.value.message
            assert (await workers.decode(body, SIGNATURES)).inputs["x"].shape == (100_000,)
            assert workers.started == 2
            hostile = orjson.dumps({"instances": [0] * 5_000_000 + ["x"]})
            task = asyncio.ensure_future(workers.decode(hostile, SIGNATURES))
            await asyncio.sleep(0.3)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert not workers._idle
            assert (await workers.decode(body, SIGNATURES)).inputs["x"].shape == (100_000,)
            assert workers.started == 3
        finally:
            await workers.aclose()

    run(main())


def test_the_event_loop_runs_while_a_worker_decodes_a_huge_body():
    async def main():
        workers = DecodeWorkers(max_workers=1)
        gaps: list[float] = []
        done = threading.Event()

        async def tick():
            last = time.perf_counter()
            while not done.is_set():
                await asyncio.sleep(0.005)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        try:
            await workers.decode(orjson.dumps({"instances": [1.0] * 1000}), SIGNATURES)  # started
            ticker = asyncio.ensure_future(tick())
            decoded = await workers.decode(orjson.dumps({"instances": [0] * 10_000_000 + ["x"]}), SIGNATURES)
            assert decoded.error is not None and "instance 10000000" in decoded.error.message
            strings = orjson.dumps({"signature_name": "strings", "inputs": ["ab"] * 1_000_000})
            assert len((await workers.decode(strings, SIGNATURES)).inputs["text"]) == 1_000_000
            done.set()
            await ticker
        finally:
            await workers.aclose()
        assert max(gaps) < 0.2, f"the loop stood still {max(gaps) * 1000:.0f} ms"

    run(main())


def test_quotes_prove_a_body_string_free_only_when_they_are_all_accounted_for():
    assert json_predict._quoted("instances") == 2
    assert json_predict._quoted('a"b') < 0  # its text may hold one quote character or none: no proof
    assert DecodeBudget(body=b'{"instances": [1, 2], "signature_name": "s"}').quotes == 6
    assert DecodeBudget().quotes > 1 << 60  # no text: nothing proven
