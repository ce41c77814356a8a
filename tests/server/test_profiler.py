"""``tensorflow.ProfilerService/Profile`` on the gRPC port, driven by TensorFlow's own profiler client."""

from __future__ import annotations

import grpc
import pytest
from tensorflow.python.profiler import profiler_client

from jupyter_tfserve.server.profiler_service import PROFILE_METHOD, ProfileRequest


@pytest.fixture
def server(start_server, model_zoo):
    process = start_server(f"--model_base_path={model_zoo['tf2_half_plus_two']}", "--model_name=m")
    process.wait_for_versions("m", {1})
    return process


def test_tensorflows_profiler_client_gets_a_trace_tensorboard_can_read(server, tmp_path):
    logdir = tmp_path / "logs"
    logdir.mkdir()
    profiler_client.trace(server.grpc_target, str(logdir), 500, "", 3)
    traces = list((logdir / "plugins" / "profile").glob("*/*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 0


def test_the_profiler_writes_through_no_symbolic_link(server, tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    request = ProfileRequest(duration_ms=100, repository_root=str(tmp_path / "link"), session_id="s")
    with grpc.insecure_channel(server.grpc_target) as channel:
        profile = channel.unary_unary(PROFILE_METHOD)
        with pytest.raises(grpc.RpcError) as error:
            profile(request.SerializeToString(), timeout=30)
    assert error.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert not any(real.iterdir())


def test_profiling_needs_the_owners_secret_when_auth_is_on(start_server, model_zoo, tmp_path):
    process = start_server(f"--model_base_path={model_zoo['tf2_half_plus_two']}", "--model_name=m",
                           "--require_auth=true", env={"TFSERVE_ENGINE_SECRET": "s3cret"})
    request = ProfileRequest(duration_ms=100, repository_root=str(tmp_path), session_id="s")
    with grpc.insecure_channel(process.grpc_target) as channel:
        profile = channel.unary_unary(PROFILE_METHOD)
        with pytest.raises(grpc.RpcError) as error:
            profile(request.SerializeToString(), timeout=30)
        assert error.value.code() is grpc.StatusCode.UNAUTHENTICATED
        profile(request.SerializeToString(), timeout=30, metadata=[("x-tfserve-engine-secret", "s3cret")])
    assert list(tmp_path.glob("s/*.xplane.pb"))
