"""``--rest_api_timeout_in_ms``: a call that overruns answers 504 in TF Serving's format, on every REST layer.

The model is quick; the wait is the batch scheduler's, which holds a lone request for up to 3 s
hoping for company, far past the 200 ms the engine gives a REST call.
"""

from __future__ import annotations

import time

import pytest

from tests.helpers.models import write_tf1_half_plus

LAYERS = {
    "direct path": [],
    "tornado handlers": ["--rest_direct_calls=false"],
    "front door": ["--rest_front_processes=1"],
}


@pytest.mark.parametrize("layer", list(LAYERS))
def test_an_overrunning_call_answers_504_and_the_engine_serves_on(tmp_path, start_server, layer):
    write_tf1_half_plus(tmp_path / "half", 1)
    batching = tmp_path / "batching.config"
    batching.write_text("max_batch_size { value: 64 } batch_timeout_micros { value: 3000000 } "
                        "max_enqueued_batches { value: 8 } num_batch_threads { value: 1 }")
    server = start_server("--model_name=half", f"--model_base_path={tmp_path / 'half'}", "--enable_batching",
                          f"--batching_parameters_file={batching}", "--rest_api_timeout_in_ms=200", *LAYERS[layer])
    server.wait_for_versions("half", {1})
    for _ in range(2):
        started = time.monotonic()
        answer = server.post("/v1/models/half:predict", {"instances": [1.0]})
        elapsed = time.monotonic() - started
        assert answer.status_code == 504, answer.text
        assert answer.json() == {"error": "Request timed out after 200 ms"}
        assert 0.2 <= elapsed < 2.5, elapsed  # well before the batch's 3 s
    assert server.get("/v1/models/half").json()["model_version_status"][0]["state"] == "AVAILABLE"
