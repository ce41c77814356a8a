"""The notebook widgets against a real Jupyter server (and a private engine): state after real traffic.

No frontend: widget state is read from the Python objects (trace data, values,
HTML). Live tasks are driven on the test's event loop and waited for by condition,
never by timing. Every test serves models under names of its own, so the order of
tests does not matter on the module's shared server.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from jupyter_tfserve.kernel.client import TFServeClient
from jupyter_tfserve.kernel.widgets import (
    ABDashboard,
    ComparisonResult,
    ExportForm,
    LatencyMonitor,
    ModelBrowser,
    browser,
    compare_versions,
    dashboard,
    export_form,
    monitor,
)
from jupyter_tfserve.kernel.widgets.live import SeriesBuffer
from tests.helpers.models import write_tf1_half_plus

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


@pytest.fixture(scope="module")
def half_plus_versions(tmp_path_factory) -> Path:
    """Version 1 (x/2 + 2) and version 2 (x/2 + 3) of half_plus_two, built once and copied per test."""
    base = tmp_path_factory.mktemp("half-plus-versions")
    write_tf1_half_plus(base, 1)
    write_tf1_half_plus(base, 2, b=3.0)
    return base


def wait_for(condition: Callable[[], object], seconds: float = 20, what: str = "condition") -> object:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} not reached within {seconds} s")


async def wait_for_async(condition: Callable[[], object], seconds: float = 20, what: str = "condition") -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.02)

    try:
        await asyncio.wait_for(poll(), seconds)
    except TimeoutError:
        raise AssertionError(f"{what} not reached within {seconds} s") from None


def serve(client: TFServeClient, root: Path, source: Path, name: str, versions: tuple[int, ...] = (1, 2),
          labels: dict[str, int] | None = None) -> None:
    """Copy ``versions`` of ``source`` to ``root/name``, load them all and wait until each is AVAILABLE."""
    for version in versions:
        shutil.copytree(source / str(version), root / name / str(version))
    client.load(name, str(root / name), version_policy="all", labels=labels)

    def all_available() -> bool:
        states = {int(s["version"]): s["state"] for s in client.model(name)["model_version_status"]}
        return all(states.get(version) == "AVAILABLE" for version in versions)

    wait_for(all_available, what=f"{name} versions {versions} AVAILABLE")


def send(client: TFServeClient, name: str, count: int, version: int | None = None) -> None:
    for index in range(count):
        client.predict(name, [[float(index)]], version=version)


def points(trace) -> list[float]:
    return [value for value in trace.y if value is not None]


@pytest.mark.asyncio
async def test_ab_dashboard_follows_traffic_applies_split_and_shadow_and_promotes(client, repository,
                                                                               half_plus_versions):
    name = "ab_dashboard"
    serve(client, repository, half_plus_versions, name)
    send(client, name, 30, version=1)
    send(client, name, 30, version=2)

    dash = ABDashboard(client, name, live=False)
    try:
        assert (dash.version_a.value, dash.version_b.value) == (1, 2)
        assert "v1" in dash.versions_html.value and "v2" in dash.versions_html.value
        assert "AVAILABLE" in dash.versions_html.value
        assert dash.split.value == 0 and dash.shadow.value is False
        assert dash.task is None

        summary = await dash.refresh_once()
        assert summary is not None and dash.ticks == 1
        for version in ("1", "2"):
            series = summary["versions"][version]["series"]
            assert points(dash.plot.trace(version, "p50")) == [p["p50_ms"] for p in series if p["p50_ms"] is not None]
            assert points(dash.plot.trace(version, "p99")) == [p["p99_ms"] for p in series if p["p99_ms"] is not None]
            assert sum(dash.plot.trace(version, "req/s").y) == 30
        assert dash.plot.trace("1", "p50").line.color != dash.plot.trace("2", "p50").line.color
        assert "A · v1" in dash.stats.value and "B · v2" in dash.stats.value
        assert dash.stats.value.count(">30<") == 2  # requests, side by side

        dash.split.value = 25
        dash.apply_button.click()
        assert dash.status.kind == "ok", dash.status.message
        assert client.model(name)["routing"]["split"] == {"1": 75, "2": 25}
        assert "v1 75 % · v2 25 %" in dash.split_label.value

        dash.split.value = 0
        dash.apply_button.click()
        dash.shadow.value = True  # applied at once, the split is kept
        routing = client.model(name)["routing"]
        assert routing["split"] == {"1": 100, "2": 0}
        assert routing["shadow"]["target"] == "2" and routing["shadow"]["tolerance"] == pytest.approx(1e-3)

        send(client, name, 30)  # unversioned: v1 answers, v2 shadows
        wait_for(lambda: client.windows(name)["routing"]["shadow"]["compared"] == 30, what="30 shadow comparisons")
        await dash.refresh_once()
        assert dash.arm_requests == {"1": 30}
        assert dash.agreement_rate == 0.0  # b=2 vs b=3: every output differs by exactly 1.0 > 1e-3
        assert dash.shadow_stats["max_abs_difference"] == 1.0
        assert dash.shadow_stats["mean_abs_difference"] == 1.0
        bars = dict(zip(dash.histogram.data[0].x, dash.histogram.data[0].y, strict=True))
        assert bars["[1, 10)"] == 30 and sum(bars.values()) == 30
        assert sum(dash.plot.trace("2 shadow", "req/s").y) == 30
        assert "0.0 %" in dash.routing_html.value

        dash.promote_button.click()
        assert dash.status.kind == "ok", dash.status.message
        description = client.model(name)
        assert description["labels"]["stable"] == "2"
        assert description["routing"]["split"] is None and description["routing"]["shadow"] is None
        assert dash.shadow.value is False and dash.split.value == 0
        assert "stable" in dash.versions_html.value

        dash.version_a.value = 2  # A == B: refused in the status line, not raised into the kernel
        dash.apply_button.click()
        assert dash.status.kind == "error" and "different versions" in dash.status.message
        assert client.model(name)["routing"]["split"] is None
        dash.shadow.value = True  # refused too, and the toggle shows the server's state again
        assert dash.status.kind == "error" and dash.shadow.value is False
        assert client.model(name)["routing"]["shadow"] is None
    finally:
        dash.close()
        client.unload(name)
    assert dash.closed and dash.figure.comm is None and dash.apply_button.comm is None


def test_ab_dashboard_defaults_to_stable_versus_canary(client, repository, half_plus_versions):
    name = "ab_labels"
    serve(client, repository, half_plus_versions, name, labels={"stable": 2, "canary": 1})
    try:
        board = dashboard(client, name, live=False)
        assert isinstance(board, ABDashboard)
        assert (board.version_a.value, board.version_b.value) == (2, 1)
        assert board.promote_button.description == "Promote v1"
        bundle = board._repr_mimebundle_()
        assert WIDGET_VIEW in bundle
        assert "<b>A/B: ab_labels</b>" in bundle["text/html"] and "Promote" not in bundle["text/html"]
        assert "plotly-latest" not in bundle["text/html"] and len(bundle["text/html"]) < 200_000  # plotly.js: not in
        board.close()
        assert board._repr_mimebundle_() == {"text/plain": "<closed ABDashboard>"}
    finally:
        client.unload(name)


def test_model_browser_lists_versions_and_its_buttons_act_on_the_server(client, repository, half_plus_versions):
    name = "browse_me"
    serve(client, repository, half_plus_versions, name)
    view = browser(client)
    try:
        assert isinstance(dashboard(client), ModelBrowser)
        row = view.rows[name]
        assert "v1" in row.table.value and "v2" in row.table.value and row.table.value.count("AVAILABLE") == 2
        assert [value for _, value in row.version.options] == [2, 1]

        row.version.value = 1
        row.promote_button.click()
        assert view.status.kind == "ok", view.status.message
        assert client.model(name)["labels"] == {"stable": "1"}
        row = view.rows[name]  # rebuilt from the server
        assert "stable" in row.table.value

        row.version.value = 2
        row.unload_version_button.click()
        assert view.status.kind == "ok", view.status.message
        states = {s["version"]: s["state"] for s in client.model(name)["model_version_status"]}
        assert states.get("2") != "AVAILABLE" and states["1"] == "AVAILABLE"

        view.rows[name].unload_version_button.click()  # the last version: the engine refuses, the widget says so
        assert view.status.kind == "error" and "only version" in view.status.message

        view.rows[name].unload_button.click()
        assert view.status.kind == "ok"
        assert client.find_model(name) is None and name not in view.rows

        view.load_name.value, view.load_path.value, view.load_policy.value = "browse_loaded", "half_plus_two", "latest"
        view.load_button.click()
        assert view.status.kind == "ok", view.status.message
        assert "browse_loaded" in view.rows
        assert client.predict("browse_loaded", [[2.0]]).tolist() == [[3.0]]

        view.load_name.value, view.load_path.value = "browse_bad", "../outside"
        view.load_button.click()
        assert view.status.kind == "error" and ".." in view.status.message
        assert "browse_bad" not in view.rows
    finally:
        view.close()
        for served in ("browse_loaded",):
            if client.find_model(served) is not None:
                client.unload(served)
    assert view.load_button.comm is None and view.refresh_button.comm is None


def test_export_form_finds_a_keras_model_in_the_namespace_and_exports_it(client):
    import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    namespace = {"clf": model, "x_warm": np.zeros((2, 4), np.float32), "epochs": 3, "_private": model,
                 "layer": keras.layers.Dense(2)}
    form = export_form(client, namespace)
    try:
        assert isinstance(form, ExportForm)
        assert [value for _, value in form.model.options] == ["clf"]
        assert form.name.value == "clf"  # from the variable name
        assert [value for _, value in form.warmup.options] == [None, "x_warm"]

        form.name.value, form.label.value, form.warmup.value = "widget_export", "canary", "x_warm"
        form.export_button.click()
        assert form.status.kind == "ok", form.status.message
        assert form.result.version == 1 and form.result.labels == {"canary": 1}
        assert form.progress.value == form.progress.max and form.progress.bar_style == "success"
        description = client.model("widget_export")
        assert {s["version"]: s["state"] for s in description["model_version_status"]} == {"1": "AVAILABLE"}
        assert client.predict("widget_export", np.ones((1, 4), np.float32)).shape == (1, 3)

        del namespace["clf"]  # the namespace is read again at click time
        form.export_button.click()
        assert form.status.kind == "error" and "no longer defined" in form.status.message
    finally:
        form.close()
        if client.find_model("widget_export") is not None:
            client.unload("widget_export")

    empty = ExportForm(client, {"x": np.ones(3)})
    empty.export_button.click()
    assert empty.status.kind == "error" and "pick a model" in empty.status.message
    empty.close()


def test_compare_versions_gives_exact_differences_for_half_plus_two(client, repository, half_plus_versions):
    name = "compare_me"
    serve(client, repository, half_plus_versions, name)
    data = np.arange(10, dtype=np.float32).reshape(-1, 1)
    try:
        result = compare_versions(client, name, data, 1, 2, batch_size=4)
    finally:
        client.unload(name)
    assert np.array_equal(result.outputs_a, data / 2 + 2) and np.array_equal(result.outputs_b, data / 2 + 3)
    assert np.array_equal(result.differences, np.ones(10))
    assert result.max_abs_difference == 1.0 and result.mean_abs_difference == 1.0
    assert result.argmax_agreement is None  # one value per instance: no score vector
    assert result.latencies_a_ms.shape == (3,) and result.latencies_b_ms.shape == (3,)  # 4 + 4 + 2
    # 3 requests per version: percentiles in the table, no histogram of fractional counts
    scatter, identity = result.figure.data
    assert list(scatter.x) == list(np.ravel(data / 2 + 2)) and list(scatter.y) == list(np.ravel(data / 2 + 3))
    assert identity.name == "y = x" and list(identity.x) == list(identity.y)
    assert not result.latency_plotted and "only 3 requests: too few for a histogram" in result.widget.children[1].value
    assert "max / mean |B - A|" in result.widget.children[1].value
    bundle = result._repr_mimebundle_()
    assert WIDGET_VIEW in bundle and "too few for a histogram" in bundle["text/html"]
    result.close()
    assert result.figure.comm is None


def test_comparison_result_argmax_agreement_on_score_vectors():
    scores_a = np.array([[0.1, 0.9], [0.8, 0.2], [0.5, 0.4]])
    scores_b = np.array([[0.2, 0.8], [0.3, 0.7], [0.6, 0.3]])
    result = ComparisonResult("m", 1, 2, {"probs": scores_a}, {"probs": scores_b}, np.ones(1), np.ones(1))
    assert result.argmax_agreement == pytest.approx(2 / 3)
    assert result.differences == pytest.approx([0.1, 0.5, 0.1])
    assert result.max_abs_difference == pytest.approx(0.5)
    with pytest.raises(ValueError, match="different outputs"):
        ComparisonResult("m", 1, 2, {"a": scores_a}, {"b": scores_b}, np.ones(1), np.ones(1))


def test_comparison_with_labels_scores_both_versions_and_lists_the_disagreements():
    # 5 instances, 3 classes: A predicts 0 1 2 0 1, B predicts 0 1 2 2 0, the truth is 0 1 2 2 0
    scores_a = np.array([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.7, 0.2, 0.1], [0.1, 0.85, 0.05]],
                        dtype=np.float32)
    scores_b = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8], [0.1, 0.1, 0.8], [0.5, 0.4, 0.1]],
                        dtype=np.float32)
    labels = np.array([0, 1, 2, 2, 0])
    latencies = np.full(30, 2.0)
    result = ComparisonResult("m", 1, 2, {"probs": scores_a}, {"probs": scores_b}, latencies, latencies,
                              labels=labels)
    assert result.accuracy_a == pytest.approx(0.6) and result.accuracy_b == pytest.approx(1.0)
    assert list(result.disagreements) == [3, 4]  # largest |Δ| first: 0.7, then 0.45
    assert result.confusion_a.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]
    assert result.confusion_b.tolist() == [[2, 0, 0], [0, 1, 0], [0, 0, 2]]
    heatmap, latency_a, latency_b = result.figure.data  # 30 requests each: the histogram is drawn
    assert heatmap.type == "heatmap"
    assert np.asarray(heatmap.z).tolist() == [[1, -1, 0], [0, 0, 0], [-1, 0, 1]]  # B minus A
    assert result.latency_plotted and latency_a.name == "v1 latency" and latency_b.name == "v2 latency"
    table = result.disagreement_table()
    assert "2 instances with different classes" in table and "0 (0.70) ✗" in table and "2 (0.80) ✓" in table
    assert table.index("0 (0.70)") < table.index("1 (0.85)")
    text = result.widget.children[1].value
    assert "60.0 %" in text and "100.0 %" in text and "v2 by 40.0 points" in text
    with pytest.raises(ValueError, match="labels has 3 entries for 5 instances"):
        ComparisonResult("m", 1, 2, {"probs": scores_a}, {"probs": scores_b}, latencies, latencies, labels=[0, 1, 2])
    with pytest.raises(ValueError, match="not a classifier"):
        ComparisonResult("m", 1, 2, np.ones((5, 1)), np.ones((5, 1)), latencies, latencies, labels=labels)
    result.close()


def test_series_buffer_merges_overlapping_windows_and_stays_bounded():
    def window(*seconds: int, requests: int = 1) -> list[dict]:
        return [{"time": t, "requests": requests, "errors": 0, "p50_ms": 1.0, "p95_ms": 2.0, "p99_ms": 3.0}
                for t in seconds]

    buffer = SeriesBuffer(maxlen=5)
    buffer.merge(window(100, 101, 102))
    buffer.merge(window(102, 103, requests=4))  # second 102 grew since the last read: replaced, not doubled
    assert [(p["time"], p["requests"]) for p in buffer.points] == [(100, 1), (101, 1), (102, 4), (103, 4)]
    buffer.merge(window(110, 111))  # at most 5 seconds kept: the oldest goes
    assert [p["time"] for p in buffer.points] == [101, 102, 103, 110, 111]
    columns = buffer.arrays(now=115)
    assert sum(columns["requests"]) == 1 + 4 + 4 + 1 + 1
    assert [x.timestamp() for x in columns["x"]][2:5] == [103, 104, 109]
    assert columns["p50_ms"][3] is None and columns["requests"][3] == 0  # idle: the line breaks, req/s is 0
    assert columns["x"][-1].timestamp() == 115 and columns["requests"][-1] == 0


@pytest.mark.asyncio
async def test_live_task_ticks_on_the_running_loop_and_ends_when_the_widget_closes(client, repository,
                                                                                  half_plus_versions):
    name = "live_me"
    serve(client, repository, half_plus_versions, name, versions=(1,))
    try:
        dash = ABDashboard(client, name, interval=0.05)
        dash.describe_every_seconds = 0  # re-read versions and labels on every tick (in a worker thread)
        task = dash.task
        assert task is not None and task in asyncio.all_tasks() and not task.done()
        send(client, name, 5)
        await wait_for_async(lambda: dash.ticks >= 2, what="two live refreshes")
        assert sum(dash.plot.trace("1", "req/s").y) == 5
        client.set_labels(name, {"canary": 1})
        await wait_for_async(lambda: "canary" in dash.versions_html.value, what="the new label shown")

        dash.widget.close()  # closing the container (as Widget.close_all does) ends the task
        await asyncio.gather(task, return_exceptions=True)
        assert dash.closed and task.cancelled()
        assert task not in asyncio.all_tasks()
        assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("tfserve-live")]
        assert dash.figure.comm is None and dash.shadow.comm is None
    finally:
        client.unload(name)


def test_latency_monitor_on_a_private_engine(private_client, half_plus_versions):
    name = "monitored"
    root = Path(private_client.model_repository_root())
    serve(private_client, root, half_plus_versions, name)
    send(private_client, name, 20, version=1)
    send(private_client, name, 10, version=2)

    view = monitor(private_client, name)  # no running loop here: not live, and it says so
    assert isinstance(view, LatencyMonitor) and view.task is None and view.status.kind == "info"
    summary = view.refresh()
    assert summary is not None
    assert sum(view.plot.trace("1", "req/s").y) == 20 and sum(view.plot.trace("2", "req/s").y) == 10
    for version in ("1", "2"):
        expected = [p["p99_ms"] for p in summary["versions"][version]["series"] if p["p99_ms"] is not None]
        assert points(view.plot.trace(version, "p99")) == expected
    # two latency lines and one throughput line per version, each with a legend entry; p95 only on hover
    names = [trace.name for trace in view.figure.data]
    assert names == ["v1 p50", "v1 p99", "v1 req/s", "v2 p50", "v2 p99", "v2 req/s"]
    assert all(trace.showlegend is not False for trace in view.figure.data)
    assert view.figure.layout.legend.x > 1  # right of the plot, off the throughput chart's axis labels
    assert "p95" in view.plot.trace("1", "p50").hovertemplate
    assert ">20<" in view.stats.value and ">10<" in view.stats.value
    view.close()

    async def live() -> asyncio.Task:
        live_view = LatencyMonitor(private_client, name, interval=0.05)
        await wait_for_async(lambda: live_view.ticks >= 2, what="two live refreshes")
        task = live_view.task
        await live_view.aclose()
        assert task is not None and task.cancelled()
        assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("tfserve-live")]
        return task

    assert asyncio.run(live()).done()

    missing = LatencyMonitor(private_client, "not_served", live=False)
    assert missing.refresh() is None and missing.status.kind == "error"
    missing.close()


def test_monitor_and_dashboard_show_the_last_logged_requests_summarised(private_client, half_plus_versions):
    """Real logging by the engine, read back by the widgets: the last ten, newest first, inputs summarised."""
    client = private_client
    name = "logged_view"
    root = Path(client.model_repository_root())
    serve(client, root, half_plus_versions, name)

    view = LatencyMonitor(client, name, request_log=True, live=False)  # wherever the model logs now
    view.logged.describe_every_seconds = 0  # re-read the model's logging settings on every refresh
    view.refresh()
    assert "is not logging" in view.logged.widget.value and "--rate 0.1" in view.logged.widget.value

    described = client.set_logging(name, 1.0)
    prefix = described["logging"]["filename_prefix"]
    for index in range(12):
        client.predict(name, [[float(index)]], version=1)
    big = np.arange(500, dtype=np.float32).reshape(500, 1) + 1000  # one large request: summarised, not dumped
    client.predict(name, big, version=2)
    wait_for(lambda: client.model(name)["logging"]["records_written"] == 13, what="13 records written")

    view.refresh()
    records = view.logged.records
    assert len(records) == 10 and "100 % of requests" in view.logged.widget.value
    assert [r.inputs[0].head[0] for r in records[:-1]] == [float(i) for i in range(3, 12)]
    newest = records[-1]
    assert (newest.model, newest.version, newest.kind) == (name, 2, "predict")
    assert newest.inputs[0].text() == "x float32[500,1] [1000, 1001, 1002, 1003, …] min 1000 max 1499"
    assert newest.outputs[0].text() == "y float32[500,1] [503, 503.5, 504, 504.5, …] min 503 max 752.5"
    table = view.logged.widget.value
    assert table.index("x float32[500,1]") < table.index("x float32[1,1] [11]")  # newest first
    assert "y float32[1,1] [7.5]" in table  # 11 / 2 + 2, as version 1 answered
    assert "1004" not in table  # four leading values, never the tensor
    assert "x float32[500,1]" in view.static_html()  # the saved notebook's copy shows it too

    read = view.logged.tail.bytes_read
    view.refresh()
    assert view.logged.tail.bytes_read == read  # nothing new logged: nothing read
    client.predict(name, [[42.0]], version=1)
    wait_for(lambda: client.model(name)["logging"]["records_written"] == 14, what="14 records written")
    view.refresh()
    assert view.logged.records[-1].inputs[0].head[0] == 42.0 and view.logged.records[-1].exact_time
    assert 0 < view.logged.tail.bytes_read - read < 1000  # the one new record
    view.close()

    dash = ABDashboard(client, name, live=False, request_log=f"{prefix}*", log_records=3)
    dash.refresh()
    assert [r.inputs[0].head[0] for r in dash.logged.records] == [11.0, 1000.0, 42.0]
    assert "x float32[1,1] [42]" in dash.static_html() and "last 3 of" in dash.static_html()
    dash.close()

    missing = ABDashboard(client, name, live=False, request_log=str(root / "no-such-log"))
    missing.refresh()
    assert missing.logged.records == [] and "no logged requests yet" in missing.logged.widget.value
    missing.close()

    async def live() -> list:
        """The live task reads the log too (in a worker thread), as it refreshes."""
        live_view = LatencyMonitor(client, name, interval=0.05, request_log=f"{prefix}*", log_records=2)
        await wait_for_async(lambda: live_view.ticks >= 1 and live_view.logged.records, what="logged rows, live")
        await live_view.aclose()
        return live_view.logged.records

    assert [r.inputs[0].head[0] for r in asyncio.run(live())] == [1000.0, 42.0]
    client.set_logging(name, 0)
