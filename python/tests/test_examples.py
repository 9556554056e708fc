"""The examples in the repository deploy and run."""

from __future__ import annotations

from conftest import REPO, Server, run_python

from hopper import exception as hx


def test_batch_example(server: Server) -> None:
    r = run_python(
        "-m", "hopper", "deploy", str(REPO / "examples/batch/embed.py"), env={"HOPPER_SERVER": server.url}
    )
    assert r.returncode == 0, r.stderr
    fn = server.client().function("batch.embed")
    outs = list(fn.map(["hello", 3, "world"], return_exceptions=True))
    assert len(outs[0]) == 4 and len(outs[2]) == 4
    assert isinstance(outs[1], hx.InputFailedError) and outs[1].code == "TypeError"
    r = run_python(str(REPO / "examples/batch/embed.py"), "500", env={"HOPPER_SERVER": server.url})
    assert r.returncode == 0, r.stderr
    assert "500 texts embedded" in r.stdout


def test_shop_example(server: Server) -> None:
    """Needs class methods as functions (`shop.Model.predict`)."""
    r = run_python(
        "-m", "hopper", "deploy", str(REPO / "examples/python/shop.py"), env={"HOPPER_SERVER": server.url}
    )
    assert r.returncode == 0, r.stderr
    r = run_python(str(REPO / "examples/python/shop.py"), env={"HOPPER_SERVER": server.url})
    assert r.returncode == 0, r.stderr
    assert "{'url': 'https://example.com/b.png', 'ok': True}" in r.stdout
    assert "[0.0, 2.0, 4.0, 6.0, 8.0]" in r.stdout
