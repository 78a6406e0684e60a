#!/usr/bin/env bash
# Debian packages the test suite runs for real: headless Chromium (browser playback), Redis (replica mode) and nginx (the
# gateway's front-server mode). Installs only what is missing; needs root (as on CI and the project's
# machines).
set -euo pipefail
missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v redis-server >/dev/null || missing+=(redis-server)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing Debian packages: ${missing[*]}"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
fi
