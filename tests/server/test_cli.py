"""The command line: TF Serving's flags, and the entry points that reach it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from jupyter_tfserve.server.cli import IGNORED_FLAGS, build_parser
from tests.conftest import SHARED_TESTDATA
from tests.helpers.server import run_cli

# Every flag of tensorflow_model_server (tensorflow_serving/model_servers/main.cc, its flag_list).
MAIN_CC_FLAGS = [
    "port", "grpc_socket_path", "rest_api_port", "rest_api_num_threads", "rest_api_timeout_in_ms",
    "rest_api_enable_cors_support", "enable_batching", "allow_version_labels_for_unavailable_models",
    "batching_parameters_file", "enable_per_model_batching_parameters", "model_config_file",
    "model_config_file_poll_wait_seconds", "model_name", "model_base_path", "num_load_threads", "num_unload_threads",
    "max_num_load_retries", "load_retry_interval_micros", "file_system_poll_wait_seconds", "flush_filesystem_caches",
    "tensorflow_session_parallelism", "tensorflow_session_config_file", "tensorflow_intra_op_parallelism",
    "tensorflow_inter_op_parallelism", "use_alts_credentials", "ssl_config_file", "platform_config_file",
    "per_process_gpu_memory_fraction", "saved_model_tags", "grpc_channel_arguments", "grpc_max_threads",
    "enable_model_warmup", "num_request_iterations_for_warmup", "version", "monitoring_config_file",
    "remove_unused_fields_from_bundle_metagraph", "prefer_tflite_model", "num_tflite_pools",
    "num_tflite_interpreters_per_pool", "enable_signature_method_name_check", "xla_cpu_compilation_enabled",
    "xla_gpu_compilation_enabled", "enable_profiler", "thread_pool_factory_config_file", "mixed_precision",
    "skip_initialize_tpu", "enable_grpc_healthcheck_service", "enable_serialization_as_tensor_content",
]
TF_SERVING_FLAGS = [f"--{name}" for name in MAIN_CC_FLAGS] + [
    "--rest_api_host", "--grpc_host", "--use_tflite_model", "--grpc_response_tensor_content"]


def test_help_lists_every_tf_serving_flag():
    result = run_cli(["serve", "--help"])
    assert result.returncode == 0
    for flag in TF_SERVING_FLAGS:
        assert flag in result.stdout, flag


def test_flags_in_tf_serving_form():
    args = build_parser().parse_args([
        "serve", "--port=9000", "--rest_api_port=9001", "--enable_batching", "--model_name=m",
        "--allow_version_labels_for_unavailable_models=false", "--file_system_poll_wait_seconds=5",
    ])
    assert (args.port, args.rest_api_port, args.enable_batching, args.model_name) == (9000, 9001, True, "m")
    assert args.allow_version_labels_for_unavailable_models is False
    assert args.rest_api_host == "127.0.0.1" and args.grpc_host == "127.0.0.1"


def test_jupyter_tfserve_and_jupyter_subcommand_are_installed():
    bin_dir = Path(sys.executable).parent
    for command in ([str(bin_dir / "jupyter-tfserve")], [str(bin_dir / "jupyter"), "tfserve"]):
        assert Path(command[0]).exists(), f"{command[0]} is missing: pip install -e . installs it"
        env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
        result = subprocess.run([*command, "serve", "--help"], capture_output=True, text=True, timeout=60, env=env)
        assert result.returncode == 0, result.stderr
        assert "--model_config_file" in result.stdout


def serve_args(*argv: str):
    return build_parser().parse_args(["serve", *argv])


def test_every_ignored_flag_is_accepted_and_warned_about_once_when_set(tmp_path):
    """Flags that do not apply here change nothing silently: one warning each, then the server goes on
    (here to a config file that does not exist, so it stops at once)."""
    values = {int: "7", float: "0.5", str: "x", bool: None}
    argv = []
    for name, kind, default, _effect in IGNORED_FLAGS:
        value = "false" if kind is bool and default else values[kind]
        argv.append(f"--{name}" if value is None else f"--{name}={value}")
    result = run_cli(["serve", *argv, "--use_tflite_model", "--port=0", "--rest_api_port=0",
                      f"--model_config_file={tmp_path / 'missing.config'}"])
    assert result.returncode != 0
    for name, *_ in IGNORED_FLAGS:
        assert result.stderr.count(f"--{name}=") == 1, name
    assert "accepted for compatibility and ignored" in result.stderr
    assert "--use_tflite_model is TF Serving's old name for --prefer_tflite_model" in result.stderr


def test_defaults_of_the_ignored_flags_warn_about_nothing(tmp_path):
    result = run_cli(["serve", "--port=0", "--rest_api_port=0", "--enable_profiler=true", "--saved_model_tags=serve",
                      "--max_num_load_retries=5", f"--model_config_file={tmp_path / 'missing.config'}"])
    assert result.returncode != 0
    assert "accepted for compatibility" not in result.stderr and "WARNING jupyter_tfserve: " not in result.stderr
    assert "cannot read model config file" in result.stderr


@pytest.mark.parametrize("flag", ["--ssl_config_file=ssl.config", "--use_alts_credentials"])
def test_flags_asking_for_secure_grpc_stop_the_server(flag):
    result = run_cli(["serve", flag, "--port=0", "--rest_api_port=0"])
    assert result.returncode == 1
    assert "secure gRPC channels are not supported" in result.stderr


def test_version_prints_and_exits():
    result = run_cli(["serve", "--version"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("jupyter-tfserve: ")
    assert "TensorFlow Library: " in result.stdout


def test_grpc_flags_parse():
    args = serve_args("--grpc_socket_path=/tmp/x.sock", "--grpc_channel_arguments=grpc.a=1,grpc.b=c",
                      "--grpc_response_tensor_content")
    assert args.grpc_socket_path == "/tmp/x.sock"
    assert args.grpc_channel_arguments == "grpc.a=1,grpc.b=c"
    assert args.grpc_response_tensor_content is True
    defaults = serve_args()
    assert (defaults.grpc_socket_path, defaults.grpc_channel_arguments) == ("", "")
    assert defaults.grpc_response_tensor_content is False and defaults.enable_serialization_as_tensor_content is False


def test_engine_options_wire_the_tflite_and_method_name_flags():
    from jupyter_tfserve.server.app import engine_options

    defaults = engine_options(serve_args())
    assert defaults.prefer_tflite_model is False and defaults.enable_signature_method_name_check is False
    options = engine_options(serve_args("--prefer_tflite_model=true", "--enable_signature_method_name_check"))
    assert options.prefer_tflite_model is True and options.enable_signature_method_name_check is True
    assert engine_options(serve_args("--use_tflite_model=true")).prefer_tflite_model is True


def test_session_parallelism_follows_tf_serving_s_rule():
    from jupyter_tfserve.server.app import ServeError, session_parallelism

    assert session_parallelism(serve_args()) == (0, 0)
    assert session_parallelism(serve_args("--tensorflow_session_parallelism=3")) == (3, 3)
    assert session_parallelism(serve_args("--tensorflow_session_parallelism=3",
                                          "--tensorflow_intra_op_parallelism=2")) == (2, 0)
    assert session_parallelism(serve_args("--tensorflow_intra_op_parallelism=2",
                                          "--tensorflow_inter_op_parallelism=1")) == (2, 1)
    with pytest.raises(ServeError, match="You cannot configure all"):
        session_parallelism(serve_args("--tensorflow_session_parallelism=3", "--tensorflow_intra_op_parallelism=2",
                                       "--tensorflow_inter_op_parallelism=1"))


PARSE_ERROR = "Error parsing text-format tensorflow.serving.ModelServerConfig"


def test_tf_serving_s_bad_model_config_stops_the_server_with_protobuf_s_parse_error():
    """TF Serving's testBadModelConfig: stderr carries protobuf's C++ text-format parse error."""
    bad = SHARED_TESTDATA / "bad_model_config.txt"
    if not bad.is_file():
        pytest.skip(f"TF Serving's bad_model_config.txt is not at {bad} (a plain clone has no ../shared)")
    result = run_cli(["serve", f"--model_config_file={bad}", "--port=0", "--rest_api_port=0"])
    assert result.returncode != 0
    assert f"{PARSE_ERROR}: 1:1: " in result.stderr
    assert str(bad) in result.stderr


def test_a_bad_config_of_our_own_names_the_file_line_and_column(tmp_path):
    config = tmp_path / "typo.config"
    config.write_text('model_config_list {\n  config { nme: "x" }\n}\n')
    result = run_cli(["serve", f"--model_config_file={config}", "--port=0", "--rest_api_port=0"])
    assert result.returncode != 0
    assert str(config) in result.stderr
    assert (f'{PARSE_ERROR}: 2:12: Message type "tensorflow.serving.ModelConfig" has no field named "nme".'
            in result.stderr)
