"""The OCR example end to end: the FastAPI app (uvicorn) in front, a real Hopper server behind
it, Tesseract reading images the test draws with Pillow."""

from __future__ import annotations

import io
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image, ImageDraw, ImageFont

from conftest import free_port, http_process

HERE = Path(__file__).resolve().parent


def image_of(lines: list[str]) -> bytes:
    """A white PNG with ``lines`` in black, large enough for Tesseract."""
    font = ImageFont.load_default(size=40)
    picture = Image.new("RGB", (900, 80 + 60 * len(lines)), "white")
    draw = ImageDraw.Draw(picture)
    for i, line in enumerate(lines):
        draw.text((40, 40 + 60 * i), line, fill="black", font=font)
    out = io.BytesIO()
    picture.save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def web(server: Any, deploy_example: Callable[..., None]) -> Iterator[str]:
    deploy_example(HERE / "ocr.py")
    port = free_port()
    cmd = [sys.executable, "-m", "uvicorn", "--app-dir", str(HERE), "web:app", "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--log-level", "warning"]
    url = f"http://127.0.0.1:{port}"
    with http_process(cmd, url + "/", "the web app", env={**os.environ, "HOPPER_SERVER": server.url}):
        yield url


def poll(url: str, doc_id: str, timeout: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        doc: dict[str, Any] = httpx.get(f"{url}/documents/{doc_id}", timeout=10).json()
        if doc["state"] not in ("pending", "running"):
            return doc
        assert time.monotonic() < deadline, f"document {doc_id} still {doc['state']} after {timeout} s"
        time.sleep(0.3)


def test_an_upload_is_answered_at_once_and_its_text_arrives(web: str) -> None:
    page = httpx.get(web + "/", timeout=10)
    assert "Upload" in page.text
    started = time.monotonic()
    r = httpx.post(web + "/documents", content=image_of(["HOPPER READS THIS", "INVOICE 4711"]), timeout=10)
    assert r.status_code == 202, r.text
    assert time.monotonic() - started < 5  # the app hands the work off; it does not OCR inline
    doc = poll(web, r.json()["id"])
    assert doc["state"] == "succeeded", doc
    assert "HOPPER READS THIS" in doc["text"] and "4711" in doc["text"], doc["text"]
    assert doc["width"] == 900


def test_several_uploads_run_side_by_side(web: str) -> None:
    ids = [
        httpx.post(web + "/documents", content=image_of([f"PAGE NUMBER {n}"]), timeout=10).json()["id"]
        for n in (1, 2, 3)
    ]
    texts = [poll(web, i)["text"] for i in ids]
    for n, text in zip((1, 2, 3), texts, strict=True):
        assert f"PAGE NUMBER {n}" in text, texts


def test_a_corrupt_image_fails_with_a_clear_error_not_a_hang(web: str) -> None:
    r = httpx.post(web + "/documents", content=b"\x89PNG\r\n\x1a\n this is not really a png", timeout=10)
    doc = poll(web, r.json()["id"], timeout=30)
    assert doc["state"] == "failed", doc
    assert "not an image Pillow can read" in doc["error"], doc
    assert httpx.post(web + "/documents", content=b"", timeout=10).status_code == 400
    assert httpx.get(web + "/documents/hc-00000000000000000000000000", timeout=10).status_code == 404
    assert httpx.get(web + "/documents/garbage", timeout=10).status_code == 404
    r = httpx.post(web + "/documents", content=b"\0" * (4 << 20), timeout=30)
    assert r.status_code == 413 and "3,145,728" in r.text
