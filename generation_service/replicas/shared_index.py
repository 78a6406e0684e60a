"""The run index and request ids in Redis: ListRuns pages and idempotent retries across replicas."""

from __future__ import annotations

import json
from collections.abc import Iterable

from comfy_generation.runstore import DamagedRecord, RunRecord, RunStatus
from generation_service.errors import InvalidRequest
from generation_service.replicas.link import RedisLink, stream_entries
from generation_service.replicas.replicator import index_commands, seq_of
from generation_service.run_index import DEFAULT_PAGE, MAX_PAGE, decode_token, token_after

PENDING_REQUEST_S = 120  # a request id claimed by a replica that died before its run was recorded


class SharedIndex:
    def __init__(self, link: RedisLink) -> None:
        self.link = link
        self.keys = link.keys

    async def add(self, runs: Iterable[tuple[RunRecord, bool]]) -> None:
        """Index runs found in run storage, each with whether it was accepted (has events): idempotent,
        and the request ids of accepted runs are remembered."""
        batch = list(runs)
        for start in range(0, len(batch), 500):

            async def send(chunk: list[tuple[RunRecord, bool]] = batch[start : start + 500]) -> None:
                async with self.link.redis.pipeline(transaction=False) as pipe:
                    for record, accepted in chunk:
                        member = f"{record.timestamp}|{record.run_id}"
                        for status in RunStatus:
                            if status != record.status:
                                pipe.zrem(self.keys.status_index(status), member)
                        index_commands(pipe, self.keys, record, None)
                        if record.request_id and accepted:
                            value = json.dumps([record.run_id, record.request_fingerprint])
                            pipe.set(self.keys.request(record.request_id), value, nx=True)
                    await pipe.execute()

            await self.link.call("indexing run storage", send)

    async def page(self, statuses: frozenset[RunStatus], page_size: int, page_token: str) -> tuple[list[str], str]:
        """Run ids newest first after the token's position, and the next page's token (as RunIndex.page)."""
        size = page_size or DEFAULT_PAGE
        if not 1 <= size <= MAX_PAGE:
            raise InvalidRequest(f"page_size must be between 1 and {MAX_PAGE}")
        after = decode_token(page_token)
        upper = f"({after[0]}|{after[1]}" if after else "+"
        sets = [self.keys.status_index(s) for s in sorted(statuses)] if statuses else [self.keys.index]

        async def read() -> list[list[str]]:
            async with self.link.redis.pipeline(transaction=False) as pipe:
                for key in sets:
                    pipe.zrevrangebylex(key, upper, "-", start=0, num=size + 1)
                return list(await pipe.execute())

        members = sorted({m for found in await self.link.call("listing runs", read) for m in found}, reverse=True)
        page = [m.split("|", 1) for m in members[: size + 1]]
        more = len(page) > size
        page = page[:size]
        return [run_id for _, run_id in page], token_after(*page[-1]) if more else ""

    async def record(self, run_id: str) -> tuple[RunRecord, int] | None:
        """The run's latest record as its owner copied it, and its last seq; None when Redis has none."""

        async def read() -> list[object]:
            async with self.link.redis.pipeline(transaction=False) as pipe:
                pipe.get(self.keys.record(run_id))
                pipe.xrevrange(self.keys.events(run_id), count=1)
                return list(await pipe.execute())

        text, last = await self.link.call("reading a run", read)
        if not isinstance(text, str):
            return None
        try:
            record = RunRecord.from_json(text.encode(), run_id)
        except DamagedRecord:
            return None  # storage has the record too; the caller reads it there
        entries = stream_entries(last)
        last_seq = seq_of(entries[0][0]) if entries else 0
        return record, max(last_seq, record.last_seq)

    # -- request ids ------------------------------------------------------------------------------

    async def claim_request(self, request_id: str, run_id: str, fingerprint: str) -> tuple[str, str] | None:
        """Claim the request id for a run about to start. None: claimed; else the (run id, fingerprint)
        a replica claimed it for first."""
        key = self.keys.request(request_id)
        value = json.dumps([run_id, fingerprint])

        async def claim() -> tuple[bool, object]:
            async with self.link.redis.pipeline(transaction=True) as pipe:
                pipe.set(key, value, nx=True, ex=PENDING_REQUEST_S)
                pipe.get(key)
                won, current = await pipe.execute()
                return bool(won), current

        won, current = await self.link.call("claiming a request id", claim)
        if won or not isinstance(current, str):
            return None if won else await self.claim_request(request_id, run_id, fingerprint)
        other_run, other_fingerprint = json.loads(current)
        return str(other_run), str(other_fingerprint)

    async def keep_request(self, request_id: str) -> None:
        """The run of the request was accepted: the id stays claimed for good."""
        await self.link.call("keeping a request id", lambda: self.link.redis.persist(self.keys.request(request_id)))

    async def drop_request(self, request_id: str, run_id: str) -> None:
        """The run was not started: the request id is free for a retry (if it is still this run's)."""
        key = self.keys.request(request_id)

        async def drop() -> None:
            current = await self.link.redis.get(key)
            if isinstance(current, str) and json.loads(current)[0] == run_id:
                await self.link.redis.delete(key)

        await self.link.call("freeing a request id", drop)
