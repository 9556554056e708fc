"""spawn, remote, get, from_id, cancel, idempotency, and every exception class."""

from __future__ import annotations

import asyncio
import http.server
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import Deployed, Server, run_python, wait_for

import hopper
from hopper import exception as hx

SOURCE = """
import os, time

@app.function(concurrency=8)
def echo(x):
    return x

@app.function(concurrency=4)
def add(a, b=10, *, c=0):
    return a + b + c

@app.function(concurrency=4)
def sleepy(seconds):
    time.sleep(seconds)
    return seconds

@app.function(concurrency=4)
def fail(kind):
    if kind == "value":
        raise ValueError("a bad value")
    if kind == "os":
        raise FileNotFoundError(2, "no such file", "/x")
    raise RuntimeError(kind)

@app.function(timeout=1)
def too_slow():
    time.sleep(30)

@app.function()
def echo_bytes(data: bytes) -> dict:
    return {"len": len(data), "back": data}
"""


@pytest.fixture(scope="module")
def app(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Deployed:
    folder = tmp_path_factory.mktemp("calls")
    file = folder / "app.py"
    file.write_text("import hopper\n\napp = hopper.App('calls')\n" + SOURCE)
    r = run_python("-m", "hopper", "deploy", str(file), env={"HOPPER_SERVER": server.url})
    assert r.returncode == 0, r.stderr
    assert "calls.echo" in r.stdout
    return Deployed("calls", file, folder, server)


def test_spawn_returns_a_call_that_get_waits_for(app: Deployed) -> None:
    call = app.fn("echo").spawn({"a": [1, 2.5, None, "x"]})
    assert call.object_id.startswith("hc-")
    assert call.get(timeout=30) == {"a": [1, 2.5, None, "x"]}
    assert call.get(timeout=0) == {"a": [1, 2.5, None, "x"]}  # reading does not consume


def test_remote_passes_positional_and_keyword_arguments(app: Deployed) -> None:
    add = app.fn("add")
    assert add.remote(1) == 11
    assert add.remote(1, 2) == 3
    assert add.remote(1, b=5, c=100) == 106


def test_the_default_client_comes_from_the_environment(app: Deployed) -> None:
    hopper.Client.set_default(None)
    assert hopper.Function.from_name("calls.echo").remote("env") == "env"
    assert hopper.Client("127.0.0.1:9").server == "http://127.0.0.1:9"


def test_bytes_round_trip(app: Deployed) -> None:
    data = bytes(range(256))
    assert app.fn("echo_bytes").remote(data) == {"len": 256, "back": data}


def test_from_id_in_a_second_process(app: Deployed, server: Server) -> None:
    call = app.fn("sleepy").spawn(0.5)
    code = (
        "import json, sys, hopper\n"
        "print(json.dumps(hopper.FunctionCall.from_id(sys.argv[1]).get(timeout=30)))\n"
    )
    r = run_python("-c", code, call.object_id, env={"HOPPER_SERVER": server.url})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == 0.5


def test_a_spawn_retried_with_its_key_makes_one_call(app: Deployed, server: Server) -> None:
    # The SDK sends every spawn with an idempotency key and repeats the same request on a
    # network error; the server answers a repeat with the call it already made.
    from hopper.client import _Req

    client = server.client()
    body = '{"input": 1, "idempotency_key": "py-test-key-1"}'
    first = client._send(_Req("POST", "/v1/functions/calls.echo/calls", body=body))
    again = client._send(_Req("POST", "/v1/functions/calls.echo/calls", body=body))
    assert first["id"] == again["id"]


def test_a_delayed_spawn_waits_for_its_start_and_can_be_cancelled(app: Deployed, server: Server) -> None:
    import datetime

    echo = app.fn("echo")
    call = echo.with_options(delay="1s").spawn("later")
    info = server.get(f"/v1/calls/{call.object_id}")
    assert info["state"] == "pending" and "starts_at" in info, info
    assert call.get(timeout=60) == "later"
    starts = datetime.datetime.fromisoformat(info["starts_at"].replace("Z", "+00:00"))
    for attempt in server.get(f"/v1/calls/{call.object_id}/attempts"):
        started = datetime.datetime.fromisoformat(attempt["started_at"].replace("Z", "+00:00"))
        assert started >= starts, (attempt, info)
    # A map and spawn_many take it too; a call an hour away can be cancelled meanwhile.
    assert list(echo.with_options(delay=datetime.timedelta(milliseconds=300)).map([1, 2])) == [1, 2]
    in_an_hour = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
    away = echo.with_options(start_at=in_an_hour)
    [far] = away.spawn_many(["far"])
    far.cancel()
    with pytest.raises(hx.InputCancelledError):
        far.get(timeout=10)
    # Bad values are refused here, or by the server with the field named.
    with pytest.raises(ValueError, match="not both"):
        echo.with_options(delay=1, start_at="2030-01-01T00:00:00Z")
    with pytest.raises(ValueError, match="time zone"):
        echo.with_options(start_at=datetime.datetime.now())
    with pytest.raises(ValueError, match="delay"):
        echo.with_options(delay="soon")
    with pytest.raises(hx.InvalidInputError, match="start_at: 2001-01-01T00:00:00Z is in the past"):
        echo.with_options(start_at="2001-01-01T00:00:00Z").spawn(1)


def test_a_spawn_with_an_idempotency_key_is_made_once(app: Deployed) -> None:
    import uuid

    echo = app.fn("echo")
    key = f"order-{uuid.uuid4()}"
    first = echo.with_options(idempotency_key=key).spawn("once")
    # A retried handler spawns again with the same key: the same call answers, not a new one.
    again = echo.with_options(idempotency_key=key).spawn("once")
    assert first.object_id == again.object_id
    assert again.get(timeout=60) == "once"
    assert echo.with_options(idempotency_key=key).remote("once") == "once"
    assert asyncio.run(echo.with_options(idempotency_key=key).spawn.aio("once")).object_id == first.object_id
    # The key names that call: another input under it is refused, naming the call.
    with pytest.raises(
        hx.InvalidInputError, match=f"already used by call {first.object_id} with a different input"
    ):
        echo.with_options(idempotency_key=key).spawn("twice")
    # Without a key, each spawn is a call of its own.
    assert echo.spawn("a").object_id != echo.spawn("a").object_id
    for bad in ("", "x" * 256, 42):
        with pytest.raises(ValueError, match="1 to 255 characters"):
            echo.with_options(idempotency_key=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="holds ' ': a key is visible ASCII"):
        echo.with_options(idempotency_key="has space")
    with pytest.raises(ValueError, match="one key per input instead"):
        list(echo.with_options(idempotency_key=key).map([1, 2]))
    # Keys belong to the server: another function's call under the key is refused.
    with pytest.raises(hx.InvalidInputError, match=f"already used by call {first.object_id}"):
        app.fn("sleepy").with_options(idempotency_key=key).spawn(0)


def test_spawn_many_makes_one_call_per_input_in_order(app: Deployed) -> None:
    echo = app.fn("echo")
    calls = echo.spawn_many(range(2500))  # three requests
    assert len(calls) == 2500
    assert [calls[i].get(timeout=60) for i in (0, 999, 1000, 2499)] == [0, 999, 1000, 2499]
    # The same keys answer the same calls: nothing is spawned twice.
    keys = [f"nightly-{i}" for i in range(3)]
    first = echo.spawn_many(["a", "b", "c"], idempotency_keys=keys)
    again = echo.spawn_many(["a", "b", "c"], idempotency_keys=keys)
    assert [c.object_id for c in first] == [c.object_id for c in again]
    with pytest.raises(ValueError, match="one key per input: 2 inputs, 1 keys"):
        echo.spawn_many([1, 2], idempotency_keys=["only-one"])
    with pytest.raises(ValueError, match=r"\(a list of strings\), not one string"):
        echo.spawn_many([1, 2, 3], idempotency_keys="abc")
    with pytest.raises(ValueError, match=r"idempotency_keys\[1\] must be a non-empty string"):
        echo.spawn_many([1, 2], idempotency_keys=["k", ""])
    with pytest.raises(hx.EncodeError, match="spawn_many input 1"):
        echo.spawn_many([1, object()])


def test_spawn_many_aio(app: Deployed) -> None:
    async def main() -> list[Any]:
        calls = await app.fn("echo").spawn_many.aio(["x", "y"])
        return [await c.get.aio(timeout=30) for c in calls]

    assert asyncio.run(main()) == ["x", "y"]


def test_a_spawn_survives_a_dropped_connection(app: Deployed, server: Server) -> None:
    # A proxy that drops the first request after the server has taken it: the client's retry
    # carries the same key, so exactly one call exists.
    import socket

    host, port = server.url.removeprefix("http://").split(":")
    seen: list[bytes] = []
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)

    def proxy() -> None:
        for n in range(2):
            conn, _ = listener.accept()
            upstream = socket.create_connection((host, int(port)))
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = next(
                int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")
            )
            while len(body) < length:
                body += conn.recv(65536)
            seen.append(body)
            upstream.sendall(head + b"\r\n\r\n" + body)
            reply = upstream.recv(65536)
            if n == 0:
                conn.close()  # the server made the call; the client never hears
            else:
                conn.sendall(reply)
                conn.close()
            upstream.close()

    t = threading.Thread(target=proxy, daemon=True)
    t.start()
    client = hopper.Client(f"127.0.0.1:{listener.getsockname()[1]}")
    call = client.function("calls.echo").spawn("once")
    t.join(10)
    assert len(seen) == 2 and seen[0] == seen[1]
    calls = server.get("/v1/calls", function="calls.echo", limit=200)["calls"]
    assert [c["id"] for c in calls].count(call.object_id) == 1
    key = json.loads(seen[0])["idempotency_key"]
    assert sum(1 for c in calls if c.get("idempotency_key") == key) == 1
    assert server.client().call(call.object_id).get(timeout=30) == "once"


def test_cancel_ends_a_running_call(app: Deployed) -> None:
    call = app.fn("sleepy").spawn(60)
    time.sleep(0.5)
    call.cancel()
    with pytest.raises(hx.InputCancelledError):
        call.get(timeout=10)


def test_remote_failure_keeps_its_type_code_and_call(app: Deployed) -> None:
    with pytest.raises(hx.InputFailedError) as info:
        app.fn("fail").remote("value")
    assert isinstance(info.value, ValueError)
    assert info.value.code == "ValueError"
    assert info.value.message == "a bad value"
    assert info.value.call_id and info.value.call_id.startswith("hc-")
    # Printed as `hopper.exception.ValueError: a bad value (call …)`: the type once.
    assert str(info.value) == f"a bad value (call {info.value.call_id}, input 0)"
    with pytest.raises(hx.InputFailedError) as other:
        app.fn("fail").remote("custom")
    assert other.value.code == "RuntimeError" and isinstance(other.value, RuntimeError)
    with pytest.raises(hx.InputFailedError) as os_error:
        app.fn("fail").remote("os")
    assert os_error.value.code == "FileNotFoundError"
    assert isinstance(os_error.value, FileNotFoundError), os_error.value
    # A type the SDK cannot take on (the app's own) is named in its generic error's message.
    custom = hx.input_failed("BadImage", "blurry", "hc-x")
    assert type(custom) is hx.InputFailedError and str(custom) == "BadImage: blurry (call hc-x, input 0)"


def test_an_apps_own_exception_is_raised_as_its_type_with_the_remote_traceback(
    server: Server, tmp_path: Path
) -> None:
    import importlib
    import traceback

    folder = tmp_path / "errs"
    folder.mkdir()
    # The app's errors live in a module of their own, which a web app can import too.
    (folder / "shop_errors.py").write_text(
        "class BadImage(Exception):\n"
        "    def __init__(self, url):\n"
        "        super().__init__(url)\n"
        "        self.url = url\n"
        "    def __str__(self):\n"
        "        return f'{self.url} is blurry'\n"
        "class TwoArgs(Exception):\n"
        "    def __init__(self, path, reason):\n"
        "        super().__init__(f'{path}: {reason}')\n"
        "class ValueError(Exception):  # the app's own, named like a built-in\n"
        "    pass\n"
    )
    (folder / "errs_app.py").write_text(
        "import hopper\nfrom shop_errors import BadImage\n\napp = hopper.App('errs')\n\n\n"
        "def check(url):\n    raise BadImage(url)\n\n\n"
        "@app.function\ndef resize(url):\n    check(url)\n\n\n"
        "@app.function\ndef other(kind):\n"
        "    import shop_errors\n"
        "    if kind == 'two':\n        raise shop_errors.TwoArgs('a.png', 'too dark')\n"
        "    if kind == 'named':\n        raise shop_errors.ValueError('not the built-in')\n"
        "    check('y' * (5 << 20))  # a message over the server's request limit\n"
    )
    r = run_python("-m", "hopper", "deploy", str(folder / "errs_app.py"), env={"HOPPER_SERVER": server.url})
    assert r.returncode == 0, r.stderr
    resize = hopper.Function.from_name("errs.resize", client=server.client())
    other = hopper.Function.from_name("errs.other", client=server.client())
    # The client has not imported the app's module: the SDK's error, naming the type.
    with pytest.raises(hx.InputFailedError) as generic:
        resize.remote("a.png")
    assert type(generic.value) is hx.InputFailedError and generic.value.module == "shop_errors"
    assert str(generic.value).startswith("BadImage: a.png is blurry (call hc-"), generic.value
    # It has (a web app sharing its errors module with its functions): `except BadImage:` works.
    sys.path.insert(0, str(folder))
    try:
        errors = importlib.import_module("shop_errors")
        with pytest.raises(errors.BadImage) as own:
            resize.remote("b.png")
        # A type whose __init__ wants other arguments is still raised as itself.
        with pytest.raises(errors.TwoArgs) as two:
            other.remote("two")
        assert str(two.value).startswith("a.png: too dark (call hc-"), two.value
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop("shop_errors", None)
    assert isinstance(own.value, hx.InputFailedError) and own.value.code == "BadImage"
    # An app type named like a built-in is not taken for the built-in.
    with pytest.raises(hx.InputFailedError) as named:
        other.remote("named")
    assert not isinstance(named.value, ValueError) and named.value.module == "shop_errors", named.value
    # A message too big to send is cut, and the input still fails at once (it hung before),
    # its traceback's frames kept.
    with pytest.raises(hx.InputFailedError) as huge:
        other.remote("huge")
    assert "[the message is cut: it was" in str(huge.value) and len(str(huge.value)) < 70_000
    assert "in check" in (huge.value.remote_traceback or ""), (huge.value.remote_traceback or "")[:500]
    assert str(own.value).startswith("b.png is blurry (call hc-"), own.value
    # The remote traceback, the user's frames only, comes with it, and Python prints it.
    remote = own.value.remote_traceback or ""
    assert "in resize" in remote and "in check" in remote and "_runner.py" not in remote, remote
    # Named as in the project, not by the worker's copy of the snapshot.
    assert 'File "errs_app.py", line 8, in check' in remote, remote
    if sys.version_info >= (3, 11):
        printed = "".join(traceback.format_exception(own.value))
        assert "Remote traceback (on the worker):" in printed and "in check" in printed, printed
    # Sent to another process (multiprocessing, a result backend), it keeps where it came from.
    import pickle

    again = pickle.loads(pickle.dumps(generic.value))
    assert type(again) is hx.InputFailedError and str(again) == str(generic.value)
    assert (again.module, again.remote_traceback) == ("shop_errors", generic.value.remote_traceback)
    assert again.remote_traceback and "in check" in again.remote_traceback


def test_attempt_timeout_raises_function_timeout_error(app: Deployed) -> None:
    with pytest.raises(hx.FunctionTimeoutError) as info:
        app.fn("too_slow").remote()
    assert info.value.code == "timeout"


def test_get_with_a_timeout_raises_call_timeout_error(app: Deployed) -> None:
    call = app.fn("sleepy").spawn(5)
    started = time.monotonic()
    with pytest.raises(hx.CallTimeoutError) as info:
        call.get(timeout=0.5)
    assert isinstance(info.value, TimeoutError)
    assert time.monotonic() - started < 3
    with pytest.raises(TimeoutError):
        call.get(timeout=0)
    call.cancel()


def test_unknown_function_names_the_deployed_ones(app: Deployed) -> None:
    with pytest.raises(hx.FunctionNotFoundError) as info:
        app.fn("nope").remote(1)
    assert "calls.echo" in info.value.available
    assert "calls.echo" in str(info.value)


def test_unknown_call(app: Deployed, server: Server) -> None:
    with pytest.raises(hx.CallNotFoundError):
        hopper.FunctionCall.from_id("hc-01M8PD6P7GE1MACX7HXNPMVZPN", client=server.client()).get(0)


def test_unreachable_server(app: Deployed) -> None:
    client = hopper.Client("http://127.0.0.1:9", retries=1)
    with pytest.raises(hx.ConnectionError) as info:
        client.function("calls.echo").remote(1)
    assert info.value.url == "http://127.0.0.1:9"
    assert "HOPPER_SERVER" in str(info.value)
    assert isinstance(info.value, ConnectionError)


def test_a_client_of_several_servers_moves_past_one_it_cannot_reach(app: Deployed, server: Server) -> None:
    # The first is a port nothing listens on: the client moves to the next and stays there.
    client = hopper.Client(f"http://127.0.0.1:9, {server.url}", retries=3)
    assert client.servers == ["http://127.0.0.1:9", server.url]
    assert client.function("calls.echo").remote("through the second") == "through the second"
    assert client.server == server.url
    unreachable = hopper.Client("http://127.0.0.1:9,http://127.0.0.1:7", retries=2)
    with pytest.raises(hx.ConnectionError) as info:
        unreachable.function("calls.echo").remote(1)
    assert info.value.url == "http://127.0.0.1:9, http://127.0.0.1:7"


def test_token_errors_and_token_use(token_server: Server, deploy: Any) -> None:
    d = deploy("@app.function()\ndef hi(x):\n    return f'hi {x}'\n", target=token_server)
    with pytest.raises(hx.AuthError) as missing:
        hopper.Client(token_server.url, "").function(f"{d.app}.hi").remote(1)
    assert missing.value.status == 401
    with pytest.raises(hx.AuthError):
        hopper.Client(token_server.url, "wrong").function(f"{d.app}.hi").remote(1)
    assert token_server.client().function(f"{d.app}.hi").remote("you") == "hi you"


def test_an_input_over_the_inline_limit_travels_as_a_blob_and_the_server_says_its_limit(
    app: Deployed,
) -> None:
    # The SDK sends 2 MiB of text, over this server's 1 MiB inline limit, as a blob.
    assert app.fn("echo").remote("x" * (2 * 1024 * 1024)) == "x" * (2 * 1024 * 1024)
    # Sent inline (any HTTP client), it is refused naming the limit.
    r = httpx.post(
        f"{app.server.url}/v1/functions/{app.app}.echo/calls",
        json={"input": "x" * (2 * 1024 * 1024)},
        timeout=30,
    )
    assert r.status_code == 413, r.text
    assert "--max-payload" in r.json()["error"]["message"]


def test_values_json_cannot_hold_are_refused_before_sending(app: Deployed) -> None:
    with pytest.raises(hx.EncodeError) as nan:
        app.fn("echo").spawn(float("nan"))
    assert "nan" in str(nan.value)
    with pytest.raises(hx.EncodeError) as obj:
        app.fn("echo").spawn({"when": object()})
    assert "object" in str(obj.value) and "['when']" in str(obj.value)
    assert isinstance(obj.value, hx.InvalidInputError)
    # A string UTF-8 cannot carry (a file name decoded with surrogateescape) is named here,
    # with its place, rather than refused by the server.
    with pytest.raises(hx.EncodeError) as lone:
        app.fn("echo").spawn({"name": ["ok", "bad\udcff.png"]})
    assert "['name'][1] holds the lone surrogate '\\udcff' at character 3" in str(lone.value), lone.value
    # Text beyond ASCII travels as itself (and comes back as itself).
    assert app.fn("echo").remote("naïve 😀") == "naïve 😀"


def test_server_errors_are_server_error(tmp_path: Path) -> None:
    class Broken(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.send_response(500)
            self.send_header("content-type", "application/json")
            body = b'{"error": {"code": "internal", "message": "internal error"}}'
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Broken)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        client = hopper.Client(f"127.0.0.1:{httpd.server_address[1]}")
        with pytest.raises(hx.ServerError) as info:
            client.function("a.b").spawn(1)
        assert info.value.status == 500
    finally:
        httpd.shutdown()


def test_every_error_is_a_hopper_error() -> None:
    for cls in (
        hx.InputFailedError,
        hx.FunctionTimeoutError,
        hx.StartupError,
        hx.InputCancelledError,
        hx.CallTimeoutError,
        hx.NotFoundError,
        hx.FunctionNotFoundError,
        hx.CallNotFoundError,
        hx.ConnectionError,
        hx.AuthError,
        hx.InvalidInputError,
        hx.EncodeError,
        hx.ServerError,
        hx.DeployError,
    ):
        assert issubclass(cls, hx.Error)


def test_gather_and_info(app: Deployed) -> None:
    calls = [app.fn("echo").spawn(i) for i in range(5)]
    assert hopper.FunctionCall.gather(*calls, timeout=30) == [0, 1, 2, 3, 4]
    info = calls[0].info()
    assert info["state"] == "succeeded" and info["function"] == "calls.echo"
    wait_for(lambda: True)


def test_a_server_url_is_checked_and_normalised() -> None:
    for bad in ("ftp://x", "http://", "not a url"):
        with pytest.raises(hx.InvalidInputError, match="server URL"):
            hopper.Client(bad)
    assert hopper.Client("127.0.0.1:7433/v1/").server == "http://127.0.0.1:7433"
    assert hopper.Client("https://hopper.example").server == "https://hopper.example"


def test_info_waits_for_the_call_to_end_within_wait(deploy: Any) -> None:
    d = deploy(
        """
        import time
        @app.function
        def nap(seconds: float) -> str:
            time.sleep(seconds)
            return "awake"
        """
    )
    call = d.fn("nap").spawn(0.5)
    started = time.monotonic()
    info = call.info(wait=20)
    assert info["state"] == "succeeded" and info["output"] == "awake"
    assert time.monotonic() - started < 10  # answered when it ended, not after 20 s
    slow = d.fn("nap").spawn(30)
    started = time.monotonic()
    assert slow.info(wait=0.5)["state"] in ("pending", "running")
    assert time.monotonic() - started < 5
    slow.cancel()
