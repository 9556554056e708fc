"""Document OCR behind a web app: the web side (FastAPI). An upload is handed to Hopper at once
and answered with the call's id; the page polls until the text is ready.

    HOPPER_SERVER=http://127.0.0.1:7433 uvicorn --app-dir examples/ocr web:app --port 8000

Routes: ``GET /`` the upload page; ``POST /documents`` (the image as the body) → 202
``{"id"}``; ``GET /documents/{id}`` → ``{"state": "pending"|"running"}``, ``{"state":
"succeeded", "text", "width", "height"}`` or ``{"state": "failed", "error"}``.
"""

from __future__ import annotations

from typing import Any

import hopper
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse

app = FastAPI(title="OCR on Hopper")
recognise = hopper.Function.from_name("ocr.recognise")
# Hopper's default payload limit is 4 MiB of JSON; bytes travel base64-encoded (4 characters
# per 3 bytes), so an image may be at most 3 MiB. Larger scans: store them and send a path.
MAX_UPLOAD = 3 << 20

PAGE = """<!doctype html>
<meta charset="utf-8"><title>OCR on Hopper</title>
<h1>Read the text in an image</h1>
<input type="file" id="file" accept="image/*"> <button id="go">Upload</button>
<p id="state"></p><pre id="text"></pre>
<script>
document.getElementById("go").onclick = async () => {
  const file = document.getElementById("file").files[0];
  if (!file) return;
  const state = document.getElementById("state"), text = document.getElementById("text");
  const r = await fetch("/documents", {method: "POST", body: file});
  const {id, detail} = await r.json();
  if (!r.ok) { state.textContent = detail; return; }
  for (;;) {
    const doc = await (await fetch("/documents/" + id)).json();
    state.textContent = doc.state + (doc.error ? ": " + doc.error : "");
    if (doc.state === "succeeded") { text.textContent = doc.text; return; }
    if (doc.state !== "pending" && doc.state !== "running") return;
    await new Promise(done => setTimeout(done, 500));
  }
};
</script>
"""


@app.get("/", response_class=HTMLResponse)
async def page() -> str:
    return PAGE


@app.post("/documents", status_code=202)
async def upload(request: Request) -> dict[str, str]:
    body = await request.body()
    if not body:
        raise HTTPException(400, "send the image as the request body")
    if len(body) > MAX_UPLOAD:
        raise HTTPException(413, f"the image is {len(body):,} bytes; at most {MAX_UPLOAD:,}")
    try:
        call = await recognise.spawn.aio(body)
    except hopper.exception.InvalidInputError as e:  # e.g. over the server's payload limit
        raise HTTPException(413 if e.code == "payload_too_large" else 400, str(e)) from None
    return {"id": call.object_id}


@app.get("/documents/{call_id}")
async def document(call_id: str) -> Any:
    try:
        info = await hopper.FunctionCall.from_id(call_id).info.aio()
    except (hopper.exception.NotFoundError, hopper.exception.InvalidInputError):
        return JSONResponse({"state": "unknown", "error": f"no document {call_id}"}, status_code=404)
    state = info["state"]
    if state == "succeeded":
        return {"state": state, **info["output"]}
    if state in ("failed", "cancelled"):
        error = info.get("error") or {}
        return {"state": state, "error": error.get("message") or state}
    return {"state": state}
