"""``python -m media_gateway.sign URL_OR_PATH``: print a signed, expiring gateway URL (run page, info, media).

The secret comes from ``MEDIA_GATEWAY_SIGNING_SECRET`` (never a flag: command lines are visible to other
users), the lifetime from ``--ttl-seconds`` or ``MEDIA_GATEWAY_SIGNED_URL_TTL_SECONDS``. Anything holding
the secret can sign the same way with ``runstore.signed_media_url``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Mapping, Sequence

from comfy_generation.runstore import signed_media_url
from media_gateway.settings import Settings, SettingsError, env_name


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] = os.environ) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m media_gateway.sign",
        description=f"Sign a gateway URL with {env_name('signing_secret')} so that it can be opened while "
        "the gateway requires signatures.",
    )
    parser.add_argument("url", help="a gateway URL or path: /runs/<run_id>, /api/media/info/<run_id>, a media URL")
    parser.add_argument(
        "--ttl-seconds",
        type=int,
        metavar="SECONDS",
        help=f"how long the URL stays valid [env: {env_name('signed_url_ttl_seconds')}, default 86400]",
    )
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env(environ)
        if args.ttl_seconds is not None:
            settings = Settings(signing_secret=settings.signing_secret, signed_url_ttl_seconds=args.ttl_seconds)
    except SettingsError as exc:
        parser.error(str(exc))
    if not settings.signing_secret:
        parser.error(f"{env_name('signing_secret')} is not set")
    if "?" in args.url:
        parser.error("the URL already has a query; sign it without one (add ?download=1 or &download=1 after)")
    expires = int(time.time()) + settings.signed_url_ttl_seconds
    print(signed_media_url(args.url, settings.signing_secret, expires))
    return 0


if __name__ == "__main__":
    sys.exit(main())
