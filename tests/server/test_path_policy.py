"""The model-path rule holds on every way in: the management API and HandleReloadConfigRequest.

An engine started with --model_repository_root (the Jupyter extension's and the private
engine's) serves models only from under the root and the allowed folders. Before, TF
Serving's own reload call loaded from anywhere, and a base path holding ``${VAR}`` was
checked as written but served as expanded once the config file was read back.
"""

from __future__ import annotations

import argparse

import grpc
import pytest
import requests
from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc
from tensorflow_serving.config import model_server_config_pb2

from jupyter_tfserve.engine.config import (
    format_model_server_config,
    parse_model_server_config,
    single_model_config,
)
from jupyter_tfserve.engine.errors import Code, ServingError
from jupyter_tfserve.server.cli import build_parser
from jupyter_tfserve.server.control import PathPolicy
from tests.helpers.models import write_tf1_half_plus
from tests.helpers.server import free_port

SECRET = "test-engine-secret"
OWNER = {"X-TFServe-Engine-Secret": SECRET}


def _config(*models: tuple[str, str]) -> model_server_config_pb2.ModelServerConfig:
    config = model_server_config_pb2.ModelServerConfig()
    for name, base_path in models:
        model = config.model_config_list.config.add()
        model.name = name
        model.base_path = base_path
    return config


def test_a_base_path_holding_a_reference_is_refused_since_the_config_file_would_expand_it(tmp_path, monkeypatch):
    root = tmp_path / "repo"
    root.mkdir()
    policy = PathPolicy(str(root), [])
    monkeypatch.setenv("ESCAPE", "../outside/m")
    # What the management API wrote before: the path as checked, into the model config file...
    for spelling in ("m${ESCAPE}", "${ESCAPE}", f"{root}/${{ESCAPE}}"):
        with pytest.raises(ServingError) as raised:
            policy.resolve(spelling)
        assert raised.value.code is Code.PERMISSION_DENIED and "${ESCAPE}" in raised.value.message, spelling
    # ...which, read back at the next start, served a folder outside the root:
    text = format_model_server_config(single_model_config("m", f"{root}/${{ESCAPE}}"))
    assert parse_model_server_config(text).model_config_list.config[0].base_path == f"{root}/../outside/m"
    assert policy.resolve("m$HOME") == str(root / "m$HOME")  # a '$' that is no reference is a plain name


def test_check_config_resolves_new_paths_keeps_served_ones_and_refuses_the_rest(tmp_path):
    root, outside = tmp_path / "repo", tmp_path / "outside"
    (root / "a").mkdir(parents=True)
    (outside / "b").mkdir(parents=True)
    (root / "link").symlink_to(outside / "b")
    policy = PathPolicy(str(root), [])
    served = _config(("configured", str(outside / "b")))  # from the owner's own config file
    checked = policy.check_config(_config(("a", "a"), ("configured", str(outside / "b"))), served)
    assert [m.base_path for m in checked.model_config_list.config] == [str(root / "a"), str(outside / "b")]
    for name, base_path in (("x", str(outside / "b" / ".." / "b")), ("y", "link"), ("z", "/etc"),
                            ("w", str(tmp_path / "outside"))):
        with pytest.raises(ServingError) as raised:
            policy.check_config(_config(("a", "a"), (name, base_path)), served)
        assert raised.value.code is Code.PERMISSION_DENIED and f"model {name}:" in raised.value.message
    # No repository root: TF Serving, which serves whatever a reload names.
    anything = _config(("z", "/etc"))
    assert PathPolicy(None, []).check_config(anything, served) is anything


def _reload(target: str, config, metadata=(("x-tfserve-engine-secret", SECRET),)):
    with grpc.insecure_channel(target) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        return stub.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=config), timeout=60,
                                              metadata=metadata)


def test_handle_reload_config_request_keeps_to_the_repository(tmp_path, start_server):
    root, outside = tmp_path / "repo", tmp_path / "outside"
    write_tf1_half_plus(root / "inside", 1)
    write_tf1_half_plus(outside / "m", 1, b=10.0)
    (root / "escape").symlink_to(outside / "m")
    config_file = tmp_path / "models.config"
    config_file.write_text("model_config_list {\n}\n")
    management = free_port()
    server = start_server("--require_auth", f"--management_port={management}",
                          f"--model_repository_root={root}", f"--model_config_file={config_file}",
                          env={"TFSERVE_ENGINE_SECRET": SECRET})
    server.session.headers.update(OWNER)
    for base_path in (str(outside / "m"), str(root / "escape"), "escape", f"{root}/../outside/m"):
        with pytest.raises(grpc.RpcError) as raised:
            _reload(server.grpc_target, _config(("inside", str(root / "inside")), ("sneaky", base_path)))
        assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED, base_path
        assert "outside the model repository" in raised.value.details() or "'..'" in raised.value.details()
    models = requests.get(f"http://127.0.0.1:{management}/api/models", headers=OWNER, timeout=30).json()["models"]
    assert models == []  # a refused reload changes nothing
    response = _reload(server.grpc_target, _config(("inside", "inside")))
    assert response.status.error_code == 0
    server.wait_for_state("inside", 1)
    status = requests.get(f"http://127.0.0.1:{management}/api/models/inside", headers=OWNER, timeout=30).json()
    assert status["base_path"] == str(root / "inside")  # resolved, as the management API stores it


def test_a_reload_on_an_engine_without_a_repository_root_serves_any_path_as_tf_serving_does(tmp_path, start_server):
    write_tf1_half_plus(tmp_path / "anywhere" / "m", 1)
    server = start_server()
    assert _reload(server.grpc_target, _config(("m", str(tmp_path / "anywhere" / "m"))), ()).status.error_code == 0
    server.wait_for_state("m", 1)


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["serve", *argv])


def test_allowed_model_paths_with_a_comma_in_a_folder_name(tmp_path):
    from jupyter_tfserve.server.control import allowed_model_paths

    odd = tmp_path / "models, v2"
    odd.mkdir()
    plain = tmp_path / "plain"
    plain.mkdir()
    # The comma form keeps working for simple paths...
    assert allowed_model_paths(_args(f"--allowed_model_paths={plain}, /srv/a")) == [str(plain), "/srv/a"]
    # ...and --allowed_model_path takes one folder as written, commas included, as often as needed.
    args = _args(f"--allowed_model_path={odd}", f"--allowed_model_path={plain}", "--allowed_model_paths=/srv/a,/srv/b")
    assert allowed_model_paths(args) == ["/srv/a", "/srv/b", str(odd), str(plain)]
    policy = PathPolicy(None, allowed_model_paths(args))
    assert policy.resolve(str(odd / "m")) == str(odd / "m")
    with pytest.raises(ServingError):
        policy.resolve(str(tmp_path / "models"))  # before, the comma split it into '.../models' and ' v2'
    assert allowed_model_paths(_args()) == []
