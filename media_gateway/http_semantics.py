"""Validators, conditional requests and byte ranges for one stored file (RFC 9110 sections 8.8, 13 and 14).

Everything here is pure: it takes header values and the file's ``os.stat_result`` and decides, so the
gateway and its front-server mode (where nginx sends the bytes) answer identically. The ETag has
nginx's format (``"<mtime hex>-<size hex>"``), so a validator a browser got from one mode is honoured by
the other.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from email.utils import formatdate, parsedate_to_datetime

MAX_RANGE_SPECS = 32  # more than this in one request is not a player seeking: answer with the whole file


@dataclass(frozen=True)
class Validators:
    """The strong validators of a file: its ETag and Last-Modified date."""

    etag: str
    last_modified: str
    mtime: int  # whole seconds, as Last-Modified carries them

    @classmethod
    def of(cls, st: os.stat_result) -> Validators:
        mtime = int(st.st_mtime)
        return cls(f'"{mtime:x}-{st.st_size:x}"', formatdate(mtime, usegmt=True), mtime)


def _etags(header: str) -> list[str]:
    """The entity tags of an If-None-Match / If-Match list, weak prefixes kept."""
    return [tag.strip() for tag in header.split(",") if tag.strip()]


def _http_date(text: str) -> int | None:
    try:
        parsed = parsedate_to_datetime(text.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed.tzinfo is None:
        return None  # RFC 9110 dates are GMT; one without a zone is not a valid HTTP-date
    return int(parsed.timestamp())


def not_modified(validators: Validators, if_none_match: str | None, if_modified_since: str | None) -> bool:
    """Whether a GET/HEAD with these headers gets 304 (RFC 9110 13.2.2: If-None-Match wins over the date)."""
    if if_none_match is not None:
        tags = _etags(if_none_match)
        return "*" in tags or any(tag.removeprefix("W/") == validators.etag for tag in tags)  # weak comparison
    if if_modified_since is not None:
        since = _http_date(if_modified_since)
        return since is not None and validators.mtime <= since
    return False


def if_range_matches(validators: Validators, if_range: str | None) -> bool:
    """Whether Range may be honoured: no If-Range, or one naming this file by strong ETag or exact date."""
    if if_range is None:
        return True
    value = if_range.strip()
    if value.startswith(("W/", '"')):
        return value == validators.etag  # strong comparison: a weak tag never matches
    return _http_date(value) == validators.mtime


class RangeNotSatisfiable(Exception):
    """No range of the request overlaps the file; answer 416 with ``Content-Range: bytes */size``."""


def parse_range(header: str | None, size: int) -> list[tuple[int, int]] | None:
    """The byte ranges to send as inclusive ``(first, last)`` pairs, sorted and coalesced, or None for "send
    the whole file with 200".

    None covers no Range header, a unit other than ``bytes`` (RFC 9110 14.2: MUST ignore), a malformed range
    set (MAY ignore: browsers never send one) and more than ``MAX_RANGE_SPECS`` ranges. Raises
    RangeNotSatisfiable when the set is well formed but no range overlaps the file.
    """
    if header is None:
        return None
    unit, sep, spec_text = header.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return None
    specs = [s.strip() for s in spec_text.split(",") if s.strip()]
    if not specs or len(specs) > MAX_RANGE_SPECS:
        return None
    ranges: list[tuple[int, int]] = []
    for spec in specs:
        parsed = _parse_spec(spec)
        if parsed is None:
            return None
        first, last = parsed
        if first is None:  # suffix range: the final ``last`` bytes
            if last is not None and last > 0 and size > 0:
                ranges.append((max(size - last, 0), size - 1))
        elif first < size:
            ranges.append((first, size - 1 if last is None else min(last, size - 1)))
    if not ranges:
        raise RangeNotSatisfiable(size)
    return _coalesce(ranges)


def _parse_spec(spec: str) -> tuple[int | None, int | None] | None:
    """``a-b`` / ``a-`` / ``-n`` as (first, last), with first None for a suffix; None when malformed."""
    first_text, sep, last_text = spec.partition("-")
    first_text, last_text = first_text.strip(), last_text.strip()
    if not sep or not _digits(first_text, allow_empty=True) or not _digits(last_text, allow_empty=True):
        return None
    if not first_text:
        return (None, int(last_text)) if last_text else None
    first = int(first_text)
    last = int(last_text) if last_text else None
    if last is not None and last < first:
        return None
    return first, last


def _digits(text: str, allow_empty: bool) -> bool:
    # ASCII digits only (``str.isdigit`` accepts other scripts), and short enough for int() to be cheap.
    return (allow_empty and not text) or (0 < len(text) <= 19 and text.isascii() and text.isdigit())


def _coalesce(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, with overlapping and touching ranges merged (RFC 9110 14.2 allows it; it stops a request
    for the same bytes many times over from multiplying the response)."""
    merged: list[tuple[int, int]] = []
    for first, last in sorted(ranges):
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return merged


def content_range(first: int, last: int, size: int) -> str:
    return f"bytes {first}-{last}/{size}"
