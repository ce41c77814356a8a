"""Every manifest `jupyter tfserve deploy` writes, validated offline: built-in kinds strictly, KServe kinds by CRD."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers.models import write_tf2_half_plus
from tests.helpers.server import REPO, run_cli, write_models_config

SHARED_K8S = REPO.parent / "shared" / "k8s"
kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is in the test extra")
jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is in the test extra")
CRDS = {"InferenceService": "kserve-inferenceservices-crd.yaml", "ServingRuntime": "kserve-servingruntimes-crd.yaml"}


def crd_schema(kind: str, version: str) -> dict:
    if not SHARED_K8S.is_dir():
        pytest.skip(f"{SHARED_K8S} (../shared/k8s, KServe's CRDs) is absent")
    crd = yaml.safe_load((SHARED_K8S / CRDS[kind]).read_text())
    return next(v["schema"]["openAPIV3Schema"] for v in crd["spec"]["versions"] if v["name"] == version)


def validate(document: dict) -> None:
    kind = document["kind"]
    if kind in CRDS:
        schema = crd_schema(kind, document["apiVersion"].split("/")[1])
        jsonschema.validate(document, schema)
    else:
        kubernetes_validate.validate(document, "1.30.0", strict=True)


def deploy(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict[str, dict]]:
    out = tmp_path / "out"
    result = run_cli(["deploy", f"--output_dir={out}", *args])
    documents = {p.name: yaml.safe_load(p.read_text()) for p in sorted(out.glob("*.yaml"))} if out.is_dir() else {}
    return result, documents


@pytest.fixture
def notebook_config(tmp_path) -> Path:
    for version in (1, 2):
        write_tf2_half_plus(tmp_path / "half", version)
    config = write_models_config(tmp_path / "models.config", {"half": tmp_path / "half", "other": tmp_path / "half"})
    text = config.read_text().replace('base_path: "' + str(tmp_path / "half") + '" }',
                                      'base_path: "' + str(tmp_path / "half") + '" version_labels { key: "stable" '
                                      'value: 1 } }', 1)
    config.write_text(text)
    return config


def test_kubernetes_manifests_validate_and_carry_the_notebooks_config(tmp_path, notebook_config):
    result, documents = deploy(tmp_path, "--target=kubernetes", f"--model_config_file={notebook_config}",
                               "--storage_uri=gs://team/models", "--split=half=1:90,2:10")
    assert result.returncode == 0, result.stderr
    assert set(documents) == {"configmap.yaml", "deployment.yaml", "service.yaml", "hpa.yaml"}
    for document in documents.values():
        validate(document)
    models_config = documents["configmap.yaml"]["data"]["models.config"]
    assert 'base_path: "gs://team/models/half"' in models_config and 'key: "stable"' in models_config
    assert "the split version 1: 90%, version 2: 10% is not carried over" in result.stdout
    assert "share tokens are not carried over" in result.stdout
    container = documents["deployment.yaml"]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"].startswith("tensorflow/serving")
    assert {port["containerPort"] for port in container["ports"]} == {8500, 8501}


def test_kserve_manifests_validate_and_a_split_becomes_a_canary(tmp_path, notebook_config):
    result, documents = deploy(tmp_path, "--target=kserve", f"--model_config_file={notebook_config}",
                               "--storage_uri=s3://team/models", "--split=half=1:90,2:10")
    assert result.returncode == 0, result.stderr
    assert set(documents) == {"half.yaml", "half-canary.yaml", "other.yaml"}
    for document in documents.values():
        validate(document)
    canary = documents["half-canary.yaml"]["spec"]["predictor"]
    assert canary["canaryTrafficPercent"] == 10 and canary["model"]["storageUri"] == "s3://team/models/half-v2"
    assert documents["half.yaml"]["spec"]["predictor"]["model"]["storageUri"] == "s3://team/models/half-v1"
    assert "labels {'stable': 1} are not carried over" in result.stdout


def test_kserve_runtime_manifests_validate_and_use_kserves_flags(tmp_path):
    result, documents = deploy(tmp_path, "--target=kserve-runtime", "--model_name=half",
                               "--model_base_path=s3://team/models/half")
    assert result.returncode == 0, result.stderr
    for document in documents.values():
        validate(document)
    runtime = documents["servingruntime.yaml"]["spec"]["containers"][0]
    stock = yaml.safe_load((SHARED_K8S / "kserve-tensorflow-serving-runtime.yaml").read_text())
    assert runtime["args"] == stock["spec"]["containers"][0]["args"]
    assert documents["half.yaml"]["spec"]["predictor"]["model"]["runtime"] == "jupyter-tfserve"


def test_a_manifest_that_breaks_the_schema_is_caught(tmp_path):
    result, documents = deploy(tmp_path, "--target=kserve", "--model_name=half", "--model_base_path=s3://b/half")
    assert result.returncode == 0
    broken = documents["half.yaml"]
    broken["spec"]["predictor"]["canaryTrafficPercent"] = "ten"
    with pytest.raises(jsonschema.ValidationError):
        validate(broken)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"},
                                      "spec": {"prots": []}}, "1.30.0", strict=True)


@pytest.mark.parametrize("args, message", [
    (["--target=helm", "--model_name=m", "--model_base_path=s3://b/m"], "unknown --target 'helm'"),
    (["--target=kserve", "--model_name=m", "--model_base_path=/tmp/local"], "is local; a cluster cannot read it"),
    (["--target=kserve", "--model_config_file=/nonexistent/models.config"], "deploy: "),
    (["--target=kserve", "--model_name=m", "--model_base_path=s3://b/m", "--split=x=1:50,2:50"], "is not served"),
])
def test_bad_input_is_one_line_and_no_traceback(tmp_path, args, message):
    result, _documents = deploy(tmp_path, *args)
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_the_readme_walk_through_runs_as_written_up_to_kubectl_apply(tmp_path):
    readme = (REPO / "deploy" / "README.md").read_text()
    commands = re.findall(r"```bash\n(.*?)```", readme, re.S)
    script = "\n".join(block for block in commands if "kubectl" not in block and "docker" not in block)
    assert "jupyter tfserve deploy" in script
    env_python = str(Path(sys.executable).parent)  # the environment running the tests: its python, jupyter
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, capture_output=True,
                            text=True, timeout=240, env={"PATH": f"{env_python}:/usr/bin:/bin",
                                                         "HOME": str(tmp_path), "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "next: kubectl apply -f" in result.stdout
    for path in (tmp_path / "manifests").rglob("*.yaml"):
        validate(yaml.safe_load(path.read_text()))
