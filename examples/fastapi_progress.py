"""A FastAPI app that starts generation runs and relays their progress to browsers as server-sent events.

    pip install './client[examples]'
    GENERATION_TARGET=127.0.0.1:50051 uvicorn fastapi_progress:app --app-dir examples --port 8000

Then open http://127.0.0.1:8000/: the page starts a run and follows it with an ``EventSource``. A browser
that loses the stream reconnects by itself and sends the last id it saw as ``Last-Event-ID``, which
becomes ``after_seq``: it misses no event and sees none twice.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator

from fastapi import FastAPI, Header, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel

from generation_client import AsyncGenerationClient, InvalidRequestError, NotFoundError, event_to_dict

TARGET = os.environ.get("GENERATION_TARGET", "127.0.0.1:50051")
TOKEN = os.environ.get("GENERATION_TOKEN") or None
TEMPLATE = "sd35_text_to_image"


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Created here, inside the server's event loop: a grpc.aio channel made at import time would belong
    # to no loop (or another one) and fail on its first call.
    async with AsyncGenerationClient(TARGET, token=TOKEN) as client:
        app.state.client = client
        yield


app = FastAPI(lifespan=lifespan)


def generation(request: Request) -> AsyncGenerationClient:
    client: AsyncGenerationClient = request.app.state.client
    return client


class RunRequest(BaseModel):
    prompt: str
    steps: int = 20


@app.post("/runs")
async def start(body: RunRequest, request: Request) -> JSONResponse:
    try:
        run = await generation(request).submit(template=TEMPLATE, params={"prompt": body.prompt, "steps": body.steps})
    except InvalidRequestError as exc:
        return JSONResponse({"error": str(exc), "violations": exc.violations}, status_code=422)
    return JSONResponse({"run_id": run.run_id})


@app.get("/runs/{run_id}/events")
async def events(run_id: str, request: Request, last_event_id: int = Header(0)) -> StreamingResponse:
    client = generation(request)
    try:
        await client.get(run_id)  # an unknown run is a 404 before the stream starts
    except NotFoundError as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from exc

    async def stream() -> AsyncIterator[str]:
        yield "retry: 500\n\n"  # reconnect half a second after a lost connection
        async for event in client.watch(run_id, after_seq=last_event_id):
            yield f"id: {event.seq}\ndata: {json.dumps(event_to_dict(event))}\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})


PAGE = """<!doctype html>
<meta charset="utf-8">
<title>Generate</title>
<form id="form"><input name="prompt" value="a fox in the snow"> <button>Generate</button></form>
<p id="status"></p>
<div id="outputs"></div>
<script>
// Tests and users alike: follow(prompt) starts a run and resolves with every event once it ended.
window.received = [];
window.opened = 0;
let progressed;
window.progressed = new Promise(resolve => { progressed = resolve; });
window.follow = async (prompt, steps) => {
  const reply = await fetch('/runs', {method: 'POST', headers: {'Content-Type': 'application/json'},
                                      body: JSON.stringify({prompt, steps: steps || 20})});
  if (!reply.ok) { throw new Error('start failed: ' + reply.status + ' ' + await reply.text()); }
  const {run_id} = await reply.json();
  return new Promise((resolve, reject) => {
    const source = new EventSource('/runs/' + run_id + '/events');
    source.onopen = () => { window.opened += 1; };
    source.onmessage = message => {
      const event = JSON.parse(message.data);
      window.received.push({id: Number(message.lastEventId), event});
      document.getElementById('status').textContent = event.type +
        (event.type === 'node_progress' ? ' ' + event.value + '/' + event.max : '');
      if (event.type === 'node_progress') { progressed(); }
      if (['completed', 'failed', 'cancelled'].includes(event.type)) {
        source.close();  // the run is over: no reconnection
        for (const output of event.outputs || []) {
          const img = document.createElement('img');
          img.src = output.url;
          document.getElementById('outputs').append(img);
        }
        resolve(window.received);
      }
    };
  });
};
document.getElementById('form').onsubmit = submit => {
  submit.preventDefault();
  window.follow(new FormData(submit.target).get('prompt'));
};
</script>
"""


@app.get("/", response_class=HTMLResponse)
async def page() -> str:
    return PAGE
