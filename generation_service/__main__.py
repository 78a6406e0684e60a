"""python -m generation_service: configure logging, read settings, serve."""

from __future__ import annotations

import asyncio
import logging

from generation_service.server import serve
from generation_service.settings import Settings


def main() -> None:
    settings = Settings.from_args()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(serve(settings))
    except RuntimeError as exc:
        raise SystemExit(f"generation_service: {exc}") from exc


if __name__ == "__main__":
    main()
