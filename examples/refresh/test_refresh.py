"""The refresh example: the schedule is triggered ("run now"), the derived rows are read back
through Datasette's JSON API, and a failing refresh sends its webhook notification."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import free_port, wait_for

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import make_weather  # noqa: E402


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A local receiver: the URL, and the JSON bodies POSTed to it."""
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            received.append(json.loads(body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/hook", received
    httpd.shutdown()


def trigger(server: Any) -> dict[str, Any]:
    """Fires the schedule now and waits for its call to end."""
    fired = server.post("/v1/schedules/weather.refresh/trigger")
    assert fired["outcome"] == "fired", fired
    call_id = fired["call"]["id"]
    call: dict[str, Any] = wait_for(
        lambda: (c := server.get(f"/v1/calls/{call_id}", wait=5))["state"] in ("succeeded", "failed") and c,
        timeout=120,
        what="the refresh to end",
    )
    return call


def test_a_triggered_refresh_is_published_and_a_failing_one_notifies(
    server: Any,
    deploy_example: Callable[..., None],
    tmp_path: Path,
    webhook: tuple[str, list[dict[str, Any]]],
) -> None:
    url, received = webhook
    data = tmp_path / "weather"
    make_weather.write(data / "incoming", 2)
    deploy_example(HERE / "refresh.py", WEATHER_DATA=str(data), WEATHER_WEBHOOK=url)
    schedule = server.get("/v1/schedules/weather.refresh")
    assert schedule["timezone"] == "Europe/Berlin", schedule

    call = trigger(server)
    assert call["state"] == "succeeded", call
    assert call["output"]["rows"] == 6 and call["output"]["files"] == 2

    port = free_port()
    datasette = subprocess.Popen(
        [sys.executable, "-m", "datasette", "serve", str(data / "published/weather.db"), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}/weather/daily.json?_shape=array&_sort=day"

        def rows() -> list[dict[str, Any]] | None:
            try:
                out: list[dict[str, Any]] = httpx.get(base, timeout=5).json()
                return out
            except (httpx.HTTPError, ValueError):
                return None

        first = wait_for(rows, timeout=30, what="Datasette to serve the published file")
        assert len(first) == 6
        berlin = [r for r in first if r["station"] == "berlin"]
        assert [r["day"] for r in berlin] == ["2026-11-01", "2026-11-02"]
        assert berlin[0]["readings"] == 24 and berlin[0]["max_c"] == 14.0

        # Two more days arrive; the next refresh publishes them to the running Datasette.
        make_weather.write(data / "incoming", 4)
        assert trigger(server)["state"] == "succeeded"
        assert len(wait_for(lambda: (r := rows()) and len(r) == 12 and r, what="the new rows")) == 12

        # A corrupt file fails the refresh: nothing is published, the webhook hears of it.
        (data / "incoming" / "2026-11-09.csv").write_text(
            "station,time,celsius\nberlin,2026-11-09T00:00,warm\n"
        )
        failed = trigger(server)
        assert failed["state"] == "failed"
        assert "2026-11-09.csv:2" in failed["error"]["message"]
        message = wait_for(lambda: received and received[-1], timeout=30, what="the webhook notification")
        assert "weather.refresh" in message["text"], message
        assert failed["id"] in json.dumps(message)
        assert len(rows() or []) == 12
    finally:
        datasette.terminate()
        datasette.wait(10)
