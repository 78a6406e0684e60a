"""Discovery of SwarmUI's ComfyUI backends through SwarmUI's own API, so that each can be reached on its
own: ``ComfyBackend(discovery.proxy_url, backend_id=str(backend.id))`` sends ``X-Swarm-Backend-ID``.

What it relies on, from SwarmUI's source:

* ``src/WebAPI/API.cs`` (``HandleAsyncRequest``): routes are ``POST /API/<Route>`` with a JSON body; all but
  a few need the ``session_id`` of ``GetNewSession``, and an unknown one is 401 ``invalid_session_id``; a
  missing permission is 400 ``bad_permissions``; a route's own error is a 200 ``{"error": ...}``.
* ``src/Core/WebServer.cs``: with ``Network.RequiredAuthorization`` set, a request whose ``Authorization``
  header is not exactly that value is 401 with the text ``Unauthorized``.
* ``src/WebAPI/BasicAPIFeatures.cs`` (``GetNewSession``): with accounts on and no valid ``swarm_token``
  cookie, the answer is 200 ``{"error": "Invalid or unauthorized."}``.
* ``src/WebAPI/BackendAPI.cs`` (``ListBackends``, permission ``view_backends_list``): parameters ``nonreal``
  and ``full_data``; the answer maps each id (as text) to ``BackendToNet``: ``type``, ``status`` (the
  lower-cased ``BackendStatus``), ``id``, ``enabled``, ``title`` and more that is not read here.
* ``src/BuiltinExtensions/ComfyUIBackend/ComfyUIBackendExtension.cs``: the two ComfyUI backend types are
  ``comfyui_api`` ("ComfyUI API By URL") and ``comfyui_selfstart`` ("ComfyUI Self-Starting").
* ``src/Accounts/SessionHandler.cs``: every session is logged, stored in SwarmUI's database and kept for
  31 days, so ``SwarmDiscovery`` keeps one session across refreshes instead of opening one per refresh.

Credentials go only into request headers; no message or log line here contains them.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from generation_service.errors import BackendProtocolError, BackendUnavailable, DiscoveryRefused, GenerationError

logger = logging.getLogger(__name__)

COMFY_TYPES = frozenset({"comfyui_api", "comfyui_selfstart"})
PROXY_PATH = "/ComfyBackendDirect"
_ROUTE_PERMISSIONS = {"ListBackends": "view_backends_list"}
_TEXT_LIMIT = 200


@dataclass(frozen=True, repr=False)
class SwarmCredentials:
    """What SwarmUI may require of a caller: the exact ``Authorization`` header value of its
    ``Network.RequiredAuthorization`` setting, and the ``swarm_token`` cookie of an account login (when
    ``UserAuthorization.AuthorizationRequired`` is on). Empty means not sent. The repr hides both."""

    authorization: str | None = None
    swarm_token: str | None = None

    def __repr__(self) -> str:
        def shown(value: str | None) -> str:
            return "<set>" if value else "<unset>"

        return f"SwarmCredentials(authorization={shown(self.authorization)}, swarm_token={shown(self.swarm_token)})"

    def headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self.authorization:
            headers["Authorization"] = self.authorization
        if self.swarm_token:
            headers["Cookie"] = f"swarm_token={self.swarm_token}"
        return headers


@dataclass(frozen=True)
class SwarmBackend:
    """One ComfyUI backend of SwarmUI, as ``ListBackends`` reports it."""

    id: int
    title: str  # set by SwarmUI's admin; "" unless one was given
    type: str  # "comfyui_api" or "comfyui_selfstart"
    status: str  # disabled, errored, waiting, loading, idle or running
    enabled: bool

    @property
    def usable(self) -> bool:
        """Whether ``X-Swarm-Backend-ID`` with this id reaches a ComfyUI now. SwarmUI's proxy routes only to
        backends whose status is RUNNING (``RunningBackendsOfType``); for every other id it answers 400
        "No ComfyUI backend available". The other statuses: ``waiting``/``loading`` are starting,
        ``errored`` failed to start, ``disabled`` is switched off, and ``idle`` is an API-by-URL backend
        whose ComfyUI stopped answering (SwarmUI sets it back to running once it answers again).
        ``enabled`` is checked too: disabling a backend clears it before the backend is shut down."""
        return self.enabled and self.status == "running"


@dataclass(frozen=True)
class Changes:
    """The difference between two listings; each tuple is ordered by id, ``changed`` holds new states."""

    added: tuple[SwarmBackend, ...] = ()
    removed: tuple[SwarmBackend, ...] = ()
    changed: tuple[SwarmBackend, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)


def diff(old: Mapping[int, SwarmBackend], new: Mapping[int, SwarmBackend]) -> Changes:
    return Changes(
        added=tuple(new[i] for i in sorted(new.keys() - old.keys())),
        removed=tuple(old[i] for i in sorted(old.keys() - new.keys())),
        changed=tuple(new[i] for i in sorted(new.keys() & old.keys()) if new[i] != old[i]),
    )


class _SessionUnknown(Exception):
    """SwarmUI answered 401 ``invalid_session_id``."""


def _public(url: str) -> str:
    """The URL without user info, query or fragment."""
    parts = urlsplit(url)
    netloc = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _describe(exc: BaseException) -> str:
    """A connection failure in words, without anything of the request (headers, URL user info)."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{type(exc).__name__}: {exc.strerror}"
    return type(exc).__name__


class _SwarmApi:
    """Calls of SwarmUI's native API under one session, renewed when SwarmUI forgets it."""

    def __init__(
        self, http: aiohttp.ClientSession, swarm_url: str, credentials: SwarmCredentials, timeout_s: float
    ) -> None:
        self.url = swarm_url.rstrip("/")
        self.public_url = _public(self.url)
        self._http = http
        self._credentials = credentials
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session_id: str | None = None

    async def comfy_backends(self) -> list[SwarmBackend]:
        for _ in range(2):  # the second time with a fresh session
            if self._session_id is None:
                self._session_id = await self._new_session()
            body = {"session_id": self._session_id, "nonreal": False, "full_data": False}
            try:
                listed = await self._call("ListBackends", body)
            except _SessionUnknown:
                logger.info("SwarmUI at %s does not know our session (any more); opening a new one", self.public_url)
                self._session_id = None
                continue
            return _comfy_backends(listed, self.public_url)
        raise BackendProtocolError(f"SwarmUI at {self.public_url} refused a session it had just opened")

    async def _new_session(self) -> str:
        answer = await self._call("GetNewSession", {})
        session_id = answer.get("session_id")
        if not isinstance(session_id, str) or not session_id:
            raise BackendProtocolError(f"SwarmUI at {self.public_url}: GetNewSession answered without a session_id")
        return session_id

    async def _call(self, route: str, body: dict[str, Any]) -> dict[str, Any]:
        where = f"SwarmUI at {self.public_url}"
        try:
            async with self._http.post(
                f"{self.url}/API/{route}",
                json=body,
                headers=self._credentials.headers(),
                timeout=self._timeout,
                allow_redirects=False,
            ) as resp:
                status, raw = resp.status, await resp.read()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise BackendUnavailable(f"{where} unreachable (POST /API/{route}): {_describe(exc)}") from exc
        text = raw.decode("utf-8", errors="replace")
        try:
            answer: Any = json.loads(text)
        except ValueError:
            answer = None
        error_id = answer.get("error_id") if isinstance(answer, dict) else None
        if status >= 500:
            raise BackendUnavailable(f"{where} answered POST /API/{route} with {status}: {text[:_TEXT_LIMIT]}")
        if status == 401 and error_id == "invalid_session_id":
            raise _SessionUnknown
        if status == 401:
            raise DiscoveryRefused(self._unauthorized())
        if error_id == "bad_permissions":
            permission = _ROUTE_PERMISSIONS.get(route, "a permission")
            raise DiscoveryRefused(f"{where} refused {route}: its user lacks the {permission} permission")
        if status != 200 or not isinstance(answer, dict):
            raise BackendProtocolError(
                f"{where} answered POST /API/{route} with {status} {text[:_TEXT_LIMIT]!r}; is it a SwarmUI?"
            )
        if "error" in answer:
            error = str(answer["error"])[:_TEXT_LIMIT]
            if route == "GetNewSession" and error == "Invalid or unauthorized.":
                raise DiscoveryRefused(self._no_login())
            raise BackendProtocolError(f"{where}: {route} failed: {error}")
        return answer

    def _unauthorized(self) -> str:
        where = f"SwarmUI at {self.public_url}"
        if not self._credentials.authorization:
            return f"{where} requires an Authorization header (its Network.RequiredAuthorization) and none is set"
        return f"{where} did not accept the Authorization header (it must equal its Network.RequiredAuthorization)"

    def _no_login(self) -> str:
        where = f"SwarmUI at {self.public_url}"
        if not self._credentials.swarm_token:
            return f"{where} requires an account login: set a swarm_token cookie (a SwarmUI API token)"
        return f"{where} did not accept the swarm_token cookie (expired, revoked, or of no user)"


def _comfy_backends(listed: dict[str, Any], where: str) -> list[SwarmBackend]:
    """The ComfyUI entries of a ListBackends answer. Other backend types are skipped unread; unknown fields
    are ignored; a ComfyUI entry without a usable id, status or enabled flag makes the answer malformed."""
    found: list[SwarmBackend] = []
    for key, entry in listed.items():
        if not isinstance(entry, dict):
            raise BackendProtocolError(f"SwarmUI at {where}: ListBackends entry {key[:40]!r} is not an object")
        kind = entry.get("type")
        if kind not in COMFY_TYPES:
            continue
        backend_id, status, enabled, title = (entry.get(k) for k in ("id", "status", "enabled", "title"))
        if type(backend_id) is not int or not isinstance(status, str) or not isinstance(enabled, bool):
            raise BackendProtocolError(
                f"SwarmUI at {where}: ListBackends entry {key[:40]!r} lacks an integer id, a status text or "
                f"an enabled flag (id {type(backend_id).__name__}, status {type(status).__name__}, "
                f"enabled {type(enabled).__name__})"
            )
        found.append(
            SwarmBackend(
                id=backend_id,
                title=title if isinstance(title, str) else "",
                type=str(kind),
                status=status.lower(),
                enabled=enabled,
            )
        )
    return sorted(found, key=lambda b: b.id)


async def list_comfy_backends(
    http: aiohttp.ClientSession, swarm_url: str, credentials: SwarmCredentials, *, timeout_s: float = 30.0
) -> list[SwarmBackend]:
    """SwarmUI's ComfyUI backends by id, under a new session (retried once if SwarmUI forgets it).

    ``swarm_url`` is SwarmUI's root (``http://swarm:7801``), without credentials. Raises BackendUnavailable
    when SwarmUI cannot be reached or answers 5xx, DiscoveryRefused when it refuses the credentials or the
    user lacks ``view_backends_list``, BackendProtocolError when the answer is not SwarmUI's."""
    return await _SwarmApi(http, swarm_url, credentials, timeout_s).comfy_backends()


class SwarmDiscovery:
    """The current ComfyUI backends of one SwarmUI, and how they change.

    ``refresh()`` lists them and returns the difference to the previous listing (the first one adds them
    all); ``follow()`` refreshes every ``interval_s`` and yields each non-empty difference. A backend that
    restarts faster than the interval keeps its status between two listings and shows no change. One
    SwarmUI session is kept for all refreshes.
    """

    def __init__(
        self,
        http: aiohttp.ClientSession,
        swarm_url: str,
        credentials: SwarmCredentials,
        interval_s: float = 10.0,
        *,
        timeout_s: float = 30.0,
    ) -> None:
        self.interval_s = interval_s
        self._api = _SwarmApi(http, swarm_url, credentials, timeout_s)
        self._backends: dict[int, SwarmBackend] = {}
        self._lock = asyncio.Lock()
        self._failure: str | None = None

    @property
    def proxy_url(self) -> str:
        """The base URL of SwarmUI's ComfyUI proxy, for ``ComfyBackend(proxy_url, backend_id=...)``."""
        return self._api.url + PROXY_PATH

    @property
    def backends(self) -> Mapping[int, SwarmBackend]:
        """The backends of the last successful listing, by id."""
        return MappingProxyType(self._backends)

    async def refresh(self) -> Changes:
        """List the backends now; raises what ``list_comfy_backends`` raises, keeping the previous state."""
        async with self._lock:
            listed = {b.id: b for b in await self._api.comfy_backends()}
            changes = diff(self._backends, listed)
            self._backends = listed
            return changes

    async def follow(self) -> AsyncIterator[Changes]:
        """Refresh now and then every ``interval_s``, yielding the changes. Failures are logged (once per
        distinct message) and retried at the next interval; they never end the iteration."""
        while True:
            try:
                changes = await self.refresh()
            except GenerationError as exc:
                self._log_failure(exc)
            else:
                if self._failure is not None:
                    logger.info("SwarmUI backend discovery at %s works again", self._api.public_url)
                    self._failure = None
                if changes:
                    yield changes
            await asyncio.sleep(self.interval_s)

    def _log_failure(self, exc: GenerationError) -> None:
        message = f"{type(exc).__name__}: {str(exc)[:300]}"
        level = logging.DEBUG if message == self._failure else logging.WARNING
        logger.log(level, "SwarmUI backend discovery failed, retrying in %g s: %s", self.interval_s, message)
        self._failure = message
