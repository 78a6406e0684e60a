"""python -m generation_service: configure logging, read settings, serve."""

from __future__ import annotations

import asyncio

from comfy_generation import logformat
from generation_service.server import serve
from generation_service.settings import Settings


def main() -> None:
    settings = Settings.from_args()
    logformat.configure(settings.log_level, settings.log_format)
    try:
        asyncio.run(serve(settings))
    except RuntimeError as exc:
        raise SystemExit(f"generation_service: {exc}") from exc


if __name__ == "__main__":
    main()
