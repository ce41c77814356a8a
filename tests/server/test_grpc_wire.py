"""gRPC on the wire as TF Serving's clients meet it: typed output fields, the Unix socket, channel
arguments and message sizes, against the real ``jupyter tfserve serve`` process."""

from __future__ import annotations

import socket

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from jupyter_tfserve.server.grpc_server import (
    MAX_MESSAGE_BYTES,
    ChannelArgumentError,
    parse_channel_arguments,
    server_options,
)
from tests.helpers.models import write_tf2_half_plus
from tests.helpers.server import ServerProcess, run_cli

# What TF Serving's own test harness passes to every server it starts (tensorflow_model_server_test_base.py
# appends grpc.so_reuseaddr=1; testGoodGrpcChannelArgs adds the other two).
TF_SERVING_SUITE_CHANNEL_ARGUMENTS = "grpc.max_connection_age_ms=2000,grpc.lb_policy_name=grpclb,grpc.so_reuseaddr=1"
LOWERED_LIMIT = 1_000_000
BIG_CLIENT = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]


@pytest.fixture(scope="module")
def model_config(tmp_path_factory):
    """The TF2 half_plus_two export (x float32 [None] -> y = x/2 + 2; a ``strings`` signature)."""
    directory = tmp_path_factory.mktemp("wire-model")
    write_tf2_half_plus(directory / "half", 1)
    config = directory / "models.config"
    config.write_text(f'model_config_list {{ config {{ name: "half" base_path: "{directory / "half"}" }} }}')
    return config


def _start(args: list[str], log_path) -> ServerProcess:
    server = ServerProcess(args, log_path)
    try:
        server.wait_for_port()
        server.wait_for_versions("half", {1})
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture(scope="module")
def socket_path(tmp_path_factory):
    return tmp_path_factory.mktemp("sock") / "grpc.sock"


@pytest.fixture(scope="module")
def server(model_config, socket_path, tmp_path_factory):
    """Default output encoding, a Unix socket, and TF Serving's suite's channel arguments."""
    # A socket file left behind by an earlier server: TF Serving (gRPC's unix: listener) replaces it.
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(socket_path))
    stale.close()
    server = _start([f"--model_config_file={model_config}", f"--grpc_socket_path={socket_path}",
                     f"--grpc_channel_arguments={TF_SERVING_SUITE_CHANNEL_ARGUMENTS}"],
                    tmp_path_factory.mktemp("wire-server") / "server.log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def content_server(model_config, tmp_path_factory):
    """--grpc_response_tensor_content, and a receive limit lowered through --grpc_channel_arguments."""
    server = _start([f"--model_config_file={model_config}", "--grpc_response_tensor_content",
                     f"--grpc_channel_arguments=grpc.max_receive_message_length={LOWERED_LIMIT}"],
                    tmp_path_factory.mktemp("content-server") / "server.log")
    yield server
    server.stop()


def _stub(target: str, options=None) -> tuple[grpc.Channel, prediction_service_pb2_grpc.PredictionServiceStub]:
    channel = grpc.insecure_channel(target, options=options)
    return channel, prediction_service_pb2_grpc.PredictionServiceStub(channel)


def _request(values, signature: str = "", key: str = "x", dtype=tf.float32) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "half"
    request.model_spec.signature_name = signature
    request.inputs[key].CopyFrom(tf.make_tensor_proto(values, dtype=dtype))
    return request


def test_predict_answers_in_float_val_as_tf_serving_clients_read_it(server):
    channel, stub = _stub(server.grpc_target)
    with channel:
        response = stub.Predict(_request([2.0, 3.0, 4.0]), timeout=30)
    y = response.outputs["y"]
    assert list(y.float_val) == [3.0, 3.5, 4.0]  # the tutorials' way: no tf.make_ndarray
    assert not y.tensor_content
    assert y.dtype == tf.float32.as_datatype_enum
    assert [dim.size for dim in y.tensor_shape.dim] == [3]
    np.testing.assert_array_equal(tf.make_ndarray(y), np.float32([3.0, 3.5, 4.0]))


def test_string_and_int32_outputs_in_string_val_and_int_val(server):
    channel, stub = _stub(server.grpc_target)
    with channel:
        response = stub.Predict(_request([b"ab", b"xyz"], "strings", "text", tf.string), timeout=30)
    assert list(response.outputs["upper_bytes"].string_val) == [b"AB", b"XYZ"]
    assert list(response.outputs["length"].int_val) == [2, 3]  # tf.strings.length is int32
    assert not response.outputs["upper_bytes"].tensor_content and not response.outputs["length"].tensor_content


def test_grpc_on_the_unix_socket_replacing_a_stale_socket_file(server, socket_path):
    assert socket_path.is_socket()
    channel, stub = _stub(f"unix:{socket_path}")
    with channel:
        response = stub.Predict(_request([6.0]), timeout=30)
    assert list(response.outputs["y"].float_val) == [5.0]
    assert "gRPC API at unix:" in server.log_text()


def test_tf_serving_suite_channel_arguments_start_and_serve_across_connection_ages(server):
    """grpc.max_connection_age_ms=2000 makes the server close connections after 2 s; clients reconnect."""
    import time

    channel, stub = _stub(server.grpc_target)
    with channel:
        for _ in range(3):
            assert list(stub.Predict(_request([0.0]), timeout=30).outputs["y"].float_val) == [2.0]
            time.sleep(1.2)


def test_an_80_mb_tensor_goes_through_grpc(server):
    """Above the old 64 MiB limit, far below TF Serving's 2 GiB - 1: the request is built once."""
    values = np.arange(20_000_000, dtype=np.float32)  # 80 MB
    request = _request(values)
    assert request.ByteSize() > 80_000_000
    channel, stub = _stub(server.grpc_target, BIG_CLIENT)
    with channel:
        response = stub.Predict(request, timeout=120)
    del request
    y = response.outputs["y"]
    assert len(y.float_val) == values.size and not y.tensor_content
    np.testing.assert_array_equal(tf.make_ndarray(y), values * np.float32(0.5) + np.float32(2.0))


def test_tensor_content_when_asked(content_server):
    channel, stub = _stub(content_server.grpc_target)
    with channel:
        response = stub.Predict(_request([2.0, 4.0]), timeout=30)
    y = response.outputs["y"]
    assert not y.float_val
    assert y.tensor_content == np.float32([3.0, 4.0]).tobytes()
    np.testing.assert_array_equal(tf.make_ndarray(y), np.float32([3.0, 4.0]))


def test_a_message_over_a_lowered_limit_is_resource_exhausted_and_the_server_keeps_serving(content_server):
    request = _request(np.zeros(LOWERED_LIMIT // 4 + 1000, np.float32))
    assert request.ByteSize() > LOWERED_LIMIT
    channel, stub = _stub(content_server.grpc_target, BIG_CLIENT)
    with channel:
        with pytest.raises(grpc.RpcError) as caught:
            stub.Predict(request, timeout=30)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        response = stub.Predict(_request([2.0]), timeout=30)
    np.testing.assert_array_equal(tf.make_ndarray(response.outputs["y"]), np.float32([3.0]))


def test_any_other_file_at_the_socket_path_stops_the_server(tmp_path):
    taken = tmp_path / "not-a-socket"
    taken.write_text("keep me")
    result = run_cli(["serve", "--port=0", "--rest_api_port=0", f"--grpc_socket_path={taken}"])
    assert result.returncode != 0
    assert f"cannot listen on unix:{taken}" in result.stderr
    assert taken.read_text() == "keep me"


def test_an_invalid_channel_argument_stops_the_server_naming_it(tmp_path):
    result = run_cli(["serve", "--port=0", "--rest_api_port=0", "--grpc_channel_arguments=grpc.a=1,oops"])
    assert result.returncode != 0
    assert "'oops' is not key=value" in result.stderr


def test_channel_arguments_are_parsed_as_tf_serving_parses_them():
    assert parse_channel_arguments("") == []
    assert parse_channel_arguments("grpc.max_connection_age_ms=2000,grpc.lb_policy_name=grpclb") == [
        ("grpc.max_connection_age_ms", 2000), ("grpc.lb_policy_name", "grpclb")]
    # absl::SimpleAtoi into an int32: ASCII whitespace and a sign allowed, base 10 only, in range.
    assert parse_channel_arguments("a= +12 ,b=-3,c=007,d=0x10,e=1_000,f=2147483647,g=2147483648,h=,i=1e6") == [
        ("a", 12), ("b", -3), ("c", 7), ("d", "0x10"), ("e", "1_000"), ("f", 2147483647), ("g", "2147483648"),
        ("h", ""), ("i", "1e6")]
    assert parse_channel_arguments("k=v=w") == [("k", "v")]  # TF Serving keeps the second piece only
    for bad in ("novalue", "a=1,", ",a=1", "a=1,,b=2"):
        with pytest.raises(ChannelArgumentError):
            parse_channel_arguments(bad)


def test_server_options_give_tf_serving_s_limit_and_let_later_arguments_win():
    defaults = dict(server_options())
    assert defaults["grpc.max_receive_message_length"] == MAX_MESSAGE_BYTES == 2**31 - 1
    assert "grpc.max_send_message_length" not in defaults  # gRPC's default: no send limit, as in TF Serving
    options = server_options(parse_channel_arguments(
        "grpc.so_reuseaddr=0,grpc.max_receive_message_length=1000000,grpc.so_reuseaddr=1"))
    assert [key for key, _ in options].count("grpc.so_reuseaddr") == 1
    assert dict(options)["grpc.so_reuseaddr"] == 1
    assert dict(options)["grpc.max_receive_message_length"] == 1_000_000
