"""The engine image takes KServe's TF Serving runtime flags unchanged (deploy/Dockerfile, --target=kserve-runtime)."""

from __future__ import annotations

import yaml

from jupyter_tfserve.server.cli import build_parser, refused_flags
from tests.deploy.test_manifests import SHARED_K8S
from tests.helpers.models import write_tf2_half_plus

KSERVE_FLAGS = ["--model_name=half", "--port=9000", "--rest_api_port=8080", "--model_base_path=/mnt/models",
                "--rest_api_timeout_in_ms=60000"]


def test_kserves_flags_parse_with_nothing_refused():
    if (SHARED_K8S / "kserve-tensorflow-serving-runtime.yaml").is_file():
        stock = yaml.safe_load((SHARED_K8S / "kserve-tensorflow-serving-runtime.yaml").read_text())
        assert [a.replace("{{.Name}}", "half") for a in stock["spec"]["containers"][0]["args"]] == KSERVE_FLAGS
    args = build_parser().parse_args(["serve", *KSERVE_FLAGS])
    assert refused_flags(args) == []
    assert (args.model_name, args.port, args.rest_api_port, args.model_base_path, args.rest_api_timeout_in_ms) == (
        "half", 9000, 8080, "/mnt/models", 60000)


def test_the_engine_serves_with_kserves_flags(tmp_path, start_server):
    base = tmp_path / "mnt" / "models"
    write_tf2_half_plus(base, 1)
    server = start_server("--model_name=half", f"--model_base_path={base}", "--rest_api_timeout_in_ms=60000")
    server.wait_for_versions("half", {1})
    response = server.post("/v1/models/half:predict", {"instances": [2.0]})
    assert response.status_code == 200 and response.json()["predictions"] == [3.0]
