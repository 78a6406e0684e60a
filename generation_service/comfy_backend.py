"""Client of one ComfyUI backend, directly or through SwarmUI's /ComfyBackendDirect proxy.

One websocket carries the events of every run of the service; frames are routed to subscribers by
``prompt_id``. ComfyUI sends a prompt's events only to the socket whose clientId equals the prompt's
``client_id`` and buffers nothing, so:

* the socket is opened before any ``POST /prompt``, and prompts are submitted with its clientId;
* every (re)connection uses a fresh clientId: reconnecting with the same one can leave the new socket
  orphaned (ComfyUI's cleanup of the old socket unregisters the new one);
* a prompt submitted under an earlier clientId can miss events, so its subscription is marked
  ``blind`` and its runner reads ``/history`` instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import aiohttp

from generation_service.backend import QUEUE_SNAPSHOT_S, SOCKET_LOST, QueueState, Subscription
from generation_service.comfy_replies import FileRef, HistoryEntry, loads, parse_history_entry, rejection_error
from generation_service.errors import BackendProtocolError, BackendUnavailable, GenerationError
from generation_service.previews import FEATURE_FLAGS, parse_frame

logger = logging.getLogger(__name__)

DOWNLOAD_CHUNK = 1 << 20
_RETRY_BASE_S = 0.2
_RECONNECT_MIN_S = 0.1
_RECONNECT_MAX_S = 5.0
_STABLE_CONNECTION_S = 10.0


def public_url(base_url: str) -> str:
    """``base_url`` without credentials, query or trailing slash: how records and events name a backend."""
    parts = urlsplit(base_url.rstrip("/"))
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class ComfyBackend:
    """HTTP + websocket client of one ComfyUI (the ``Backend`` protocol); safe to share between all runs
    of the process."""

    def __init__(
        self,
        base_url: str,
        *,
        backend_id: str = "",
        request_timeout_s: float = 30.0,
        retries: int = 3,
        headers: dict[str, str] | None = None,
    ) -> None:
        """``headers``: sent on every request, the websocket upgrade included (SwarmUI credentials)."""
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self._headers = {**(headers or {}), **({"X-Swarm-Backend-ID": backend_id} if backend_id else {})}
        self._timeout = aiohttp.ClientTimeout(total=request_timeout_s)
        self._download_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=request_timeout_s, sock_read=request_timeout_s
        )
        self._session: aiohttp.ClientSession | None = None
        self._socket_task: asyncio.Task[None] | None = None
        self._client_id = ""
        self._connected = asyncio.Event()
        self._subscriptions: dict[str, Subscription] = {}
        self._closing = False
        self._queue_fetch: asyncio.Future[dict[str, QueueState]] | None = None
        self._queue_cached: tuple[float, dict[str, QueueState]] | None = None  # (fetch start, states)
        self.connections = 0  # websocket connections opened so far (reconnects = connections - 1)
        self.on_reconnect: Callable[[], None] = lambda: None
        self.on_connect: Callable[[], None] = lambda: None
        self._socket_failing = False  # the last connection attempt failed: do not wait for the socket
        self.probe_error = ""

    @property
    def public_url(self) -> str:
        """The base URL without credentials, for metadata and events."""
        return public_url(self.base_url)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def start(self) -> None:
        """Open the HTTP session and start keeping the websocket connected (in the background)."""
        self._session = aiohttp.ClientSession(headers=self._headers, timeout=self._timeout)
        self._socket_task = asyncio.create_task(self._keep_socket(), name="comfy-websocket")

    async def close(self) -> None:
        self._closing = True
        if self._socket_task is not None:
            self._socket_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._socket_task
        if self._session is not None:
            await self._session.close()

    async def wait_connected(self, timeout_s: float) -> bool:
        """Wait for the websocket, unless the backend is known to refuse it right now."""
        if self._socket_failing:
            return self.connected
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._connected.wait()
        return self.connected

    # -- websocket --------------------------------------------------------------------------------

    async def _keep_socket(self) -> None:
        delay = _RECONNECT_MIN_S
        while True:
            client_id = str(uuid.uuid4())
            opened_at = None
            try:
                async with self._http.ws_connect(
                    self._url("ws", {"clientId": client_id}), heartbeat=30.0, max_msg_size=0
                ) as ws:
                    self._client_id = client_id
                    self._socket_failing = False
                    self._connected.set()
                    self.connections += 1
                    if self.connections > 1:
                        self.on_reconnect()
                    self.on_connect()
                    opened_at = time.monotonic()
                    logger.info("backend websocket connected to %s (clientId %s)", self.public_url, client_id)
                    await self._read_frames(ws)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                self._socket_failing = True
                logger.debug("backend websocket unavailable: %r", exc)
            finally:
                if self._connected.is_set() and not self._closing:
                    logger.warning("backend websocket to %s lost; following runs through /history", self.public_url)
                self._connected.clear()
                self._client_id = ""
                for sub in self._subscriptions.values():
                    if not sub.blind:
                        sub.blind = True
                        sub.frames.put_nowait(SOCKET_LOST)
            # Back to quick retries only after a connection that held: one that a proxy accepts and drops
            # at once must not turn the backoff into a tight reconnect loop.
            if opened_at is not None and time.monotonic() - opened_at >= _STABLE_CONNECTION_S:
                delay = _RECONNECT_MIN_S
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RECONNECT_MAX_S)

    async def _read_frames(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        # Ask for type-4 previews, which name their prompt and node (ComfyUI reads only the first message).
        await ws.send_json(FEATURE_FLAGS)
        executing = ""  # the prompt whose frames came last: a type-1 preview is of it
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.BINARY:
                image = parse_frame(msg.data)
                sub = self._subscriptions.get((image.prompt_id or executing) if image else "")
                if sub is not None and image is not None:
                    sub.frames.put_nowait(image)
                continue
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            try:
                frame = json.loads(msg.data)
                prompt_id = frame.get("data", {}).get("prompt_id")
            except (ValueError, AttributeError):
                logger.debug("ignoring a malformed websocket frame: %.200s", msg.data)
                continue
            if isinstance(prompt_id, str):
                executing = prompt_id
            sub = self._subscriptions.get(prompt_id) if isinstance(prompt_id, str) else None
            if sub is not None:
                sub.frames.put_nowait(frame)

    def subscribe(self, prompt_id: str, frames: asyncio.Queue[Any] | None = None) -> Subscription:
        sub = Subscription(prompt_id) if frames is None else Subscription(prompt_id, frames=frames)
        self._subscriptions[prompt_id] = sub
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subscriptions.pop(sub.prompt_id, None)

    # -- HTTP -------------------------------------------------------------------------------------

    @property
    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("ComfyBackend.start() was not called")
        return self._session

    def _url(self, path: str, query: dict[str, str] | None = None) -> str:
        return f"{self.base_url}/{path}" + (f"?{urlencode(query)}" if query else "")

    @contextlib.asynccontextmanager
    async def _request(
        self, method: str, path: str, *, timeout: aiohttp.ClientTimeout | None = None, **kwargs: Any
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """One request, retried with backoff while the backend refuses connections or answers 5xx.

        A POST is retried only when it surely did not reach the backend (no connection) or was
        answered with a server error; a POST that timed out or lost its connection may have been
        applied, so it is not repeated. What still fails becomes BackendUnavailable. ``data`` may be
        a callable that builds the body afresh for each attempt (multipart bodies are single-use).
        """
        url, attempt = self._url(path), 0
        while True:
            body = kwargs.get("data")
            sent = {**kwargs, "data": body()} if callable(body) else kwargs
            try:
                resp = await self._http.request(method, url, timeout=timeout or self._timeout, **sent)
            except (aiohttp.ClientError, TimeoutError) as exc:
                safe = method == "GET" or isinstance(exc, aiohttp.ClientConnectorError)
                if safe and attempt < self.retries:
                    attempt = await self._backoff(attempt, method, path, repr(exc))
                    continue
                raise BackendUnavailable(
                    f"backend {self.public_url} unreachable ({method} /{path}): {reason(exc)}"
                ) from exc
            if resp.status < 500:
                break
            text = (await resp.text(errors="replace"))[:200]
            resp.release()
            if attempt < self.retries:
                attempt = await self._backoff(attempt, method, path, f"{resp.status} {text}")
                continue
            raise BackendUnavailable(f"backend answered {method} /{path} with {resp.status}: {text}")
        try:
            yield resp
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise BackendUnavailable(f"backend {self.public_url} broke off {method} /{path}: {reason(exc)}") from exc
        finally:
            resp.release()

    async def _backoff(self, attempt: int, method: str, path: str, why: str) -> int:
        delay = _RETRY_BASE_S * 2**attempt * (0.5 + random.random())
        logger.info("backend %s /%s failed (%s); retry %d in %.2f s", method, path, why, attempt + 1, delay)
        await asyncio.sleep(delay)
        return attempt + 1

    async def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        async with self._request(method, path, **kwargs) as resp:
            if resp.status != 200:
                raise BackendProtocolError(f"{method} /{path} answered {resp.status}")
            try:
                return await resp.json(content_type=None)
            except ValueError as exc:
                raise BackendProtocolError(f"{method} /{path} answered with invalid JSON") from exc

    async def submit(self, sub: Subscription, graph: dict[str, Any]) -> dict[str, Any]:
        """POST the prompt under the subscription's id and the current socket's clientId.

        Returns ComfyUI's ``node_errors`` (non-empty on a 200 when some outputs were dropped).
        Raises WorkflowRejected for a 400 with ComfyUI's validation body.
        """
        sub.client_id = self._client_id or str(uuid.uuid4())
        sub.blind = not self._client_id  # no socket: nothing will arrive for this prompt
        body = {"prompt": graph, "client_id": sub.client_id, "prompt_id": sub.prompt_id}
        try:
            return await self._post_prompt(sub.prompt_id, body)
        except BackendUnavailable:
            # The POST may have been applied before the connection broke: we chose the prompt id, so ask.
            with contextlib.suppress(GenerationError):
                if await self.queue_state(sub.prompt_id, max_age_s=0) or await self.history(sub.prompt_id):
                    logger.warning("prompt %s was queued although its POST failed", sub.prompt_id)
                    return {}
            raise

    async def _post_prompt(self, prompt_id: str, body: dict[str, Any]) -> dict[str, Any]:
        async with self._request("POST", "prompt", json=body) as resp:
            text = await resp.text(errors="replace")
            if resp.status == 200:
                reply = loads(text)
                if not isinstance(reply, dict) or reply.get("prompt_id") != prompt_id:
                    raise BackendProtocolError(f"POST /prompt answered without our prompt id: {text[:200]}")
                errors = reply.get("node_errors") or {}
                return errors if isinstance(errors, dict) else {}
            if resp.status == 400:
                raise rejection_error(text)
            if resp.status in (401, 403):
                raise BackendUnavailable(
                    f"backend refused the prompt ({resp.status}): a SwarmUI user needs the comfy_direct_calls "
                    f"and comfy_backend_generate permissions; {text[:200]}"
                )
            raise BackendProtocolError(f"POST /prompt answered {resp.status}: {text[:200]}")

    async def history(self, prompt_id: str) -> HistoryEntry | None:
        """The prompt's history entry, or None while it is queued, running, or unknown."""
        data = await self._json("GET", f"history/{prompt_id}")
        entry = data.get(prompt_id) if isinstance(data, dict) else None
        return parse_history_entry(entry) if isinstance(entry, dict) else None

    async def queue_state(self, prompt_id: str, max_age_s: float = QUEUE_SNAPSHOT_S) -> QueueState | None:
        """Where the prompt is in the backend's queue; None when it is neither running nor pending.

        ``/queue`` lists every prompt with its whole graph, so with many runs waiting, one fetch per run
        per look would grow quadratically: all runs share one snapshot at most ``max_age_s`` old.
        """
        return (await self._queue_snapshot(max_age_s)).get(prompt_id)

    async def queue_snapshot(self, max_age_s: float = QUEUE_SNAPSHOT_S) -> dict[str, QueueState]:
        """Every prompt the backend runs or holds, by prompt id (shared with ``queue_state``)."""
        return await self._queue_snapshot(max_age_s)

    async def node_classes(self) -> frozenset[str]:
        """The node classes the backend offers (the keys of ``/object_info``)."""
        data = await self._json("GET", "object_info")
        if not isinstance(data, dict):
            raise BackendProtocolError("GET /object_info answered something other than an object")
        return frozenset(str(name) for name in data)

    async def _queue_snapshot(self, max_age_s: float) -> dict[str, QueueState]:
        """``max_age_s`` 0: a fetch that reflects everything done before this call. Every fetch becomes the
        snapshot the others share (failures are not kept)."""
        if max_age_s > 0:
            if self._queue_fetch is not None and not self._queue_fetch.done():
                return await asyncio.shield(self._queue_fetch)  # join the fetch in flight
            if self._queue_cached is not None and time.monotonic() - self._queue_cached[0] <= max_age_s:
                return self._queue_cached[1]
        fetch = asyncio.ensure_future(self._fetch_queue())
        if max_age_s > 0:
            self._queue_fetch = fetch
        return await asyncio.shield(fetch)

    async def _fetch_queue(self) -> dict[str, QueueState]:
        started = time.monotonic()
        data = await self._json("GET", "queue")
        running = [item[1] for item in data.get("queue_running", [])]
        pending = sorted(data.get("queue_pending", []), key=lambda item: item[0])  # heap order on the wire
        states = {prompt_id: QueueState(running=True, ahead=0) for prompt_id in running}
        states.update({item[1]: QueueState(running=False, ahead=len(running) + i) for i, item in enumerate(pending)})
        if self._queue_cached is None or started >= self._queue_cached[0]:  # an older fetch never wins
            self._queue_cached = (started, states)
        return states

    async def delete(self, prompt_id: str) -> None:
        async with self._request("POST", "queue", json={"delete": [prompt_id]}):
            pass

    async def interrupt(self, prompt_id: str) -> None:
        # Always naming the prompt: a bare interrupt stops whatever runs, and SwarmUI's proxy fails on it.
        async with self._request("POST", "interrupt", json={"prompt_id": prompt_id}):
            pass

    async def probe(self) -> bool:
        """Whether the backend answers right now (one quick request, no retries); ``probe_error`` says
        why not."""
        try:
            async with self._http.get(self._url("system_stats"), timeout=aiohttp.ClientTimeout(total=5)) as resp:
                if resp.status == 200:
                    self.probe_error = ""
                    return True
                text = (await resp.text(errors="replace")).strip()[:200]
                self.probe_error = f"GET /system_stats answered {resp.status}: {text}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.probe_error = f"unreachable: {reason(exc)}"[:300]
        return False

    async def upload(self, data: bytes, filename: str, subfolder: str = "") -> str:
        """Upload an input file (any media: ComfyUI's /upload/image takes audio and video too) and return
        the name a Load* node takes: ``subfolder/name``. An existing file of the same name is overwritten,
        so callers pick names unique to their run."""

        def form() -> aiohttp.FormData:
            body = aiohttp.FormData()
            body.add_field("image", data, filename=filename, content_type="application/octet-stream")
            body.add_field("type", "input")
            body.add_field("subfolder", subfolder)
            body.add_field("overwrite", "true")
            return body

        reply = await self._json("POST", "upload/image", data=form)
        if not isinstance(reply, dict) or not isinstance(reply.get("name"), str):
            raise BackendProtocolError(f"POST /upload/image answered without a file name: {reply!r:.200}")
        folder = str(reply.get("subfolder") or "")
        return f"{folder}/{reply['name']}" if folder else str(reply["name"])

    async def download(self, ref: FileRef) -> AsyncIterator[bytes]:
        """The file's bytes, streamed in chunks of at most DOWNLOAD_CHUNK (never held whole)."""
        query = {"filename": ref.filename, "subfolder": ref.subfolder, "type": ref.type}  # filename first: see Swarm
        async with self._request("GET", "view?" + urlencode(query), timeout=self._download_timeout) as resp:
            if resp.status != 200:
                raise BackendProtocolError(f"GET /view of {ref.filename!r} answered {resp.status}")
            try:
                async for chunk in resp.content.iter_chunked(DOWNLOAD_CHUNK):
                    yield chunk
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise BackendUnavailable(f"download of {ref.filename!r} broke off: {reason(exc)}") from exc


def reason(exc: BaseException) -> str:
    """An exception for people: aiohttp's own text ("Cannot connect to host h:p ssl:default [Connection
    refused]") rather than its repr (ClientConnectorError(ConnectionKey(...)))."""
    return str(exc) or type(exc).__name__
