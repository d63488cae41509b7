#!/usr/bin/env bash
# Install Redis, where the partner gateway's processes that share one port count apps' calls
# (`yunkai gateway serve --quota-store async+redis://HOST:PORT`); its tests start a throwaway
# redis-server of their own on a loopback port (the package's own service is not used).
set -euo pipefail
exec bash "$(dirname "$0")/install-debian.sh" redis-server redis-server
