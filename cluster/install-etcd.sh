#!/usr/bin/env bash
# Install etcd, the metastore of clusters with more than one router (`yunkai router
# --metastore etcd://...`; DESIGN section 6a). Idempotent: does nothing when etcd is there.
# Debian/Ubuntu (apt-get, package etcd-server); run as root or with sudo. Tests start their
# own throwaway etcd on loopback in a temporary directory; the package's service is not used.
set -euo pipefail

if command -v etcd > /dev/null; then
  echo "etcd is installed: $(etcd --version | head -1)"
  exit 0
fi
if ! command -v apt-get > /dev/null; then
  echo "install-etcd.sh: no apt-get here; install etcd 3.4 or newer yourself (https://etcd.io)" >&2
  exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  sudo="sudo"
fi
$sudo apt-get update
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends etcd-server
# The package starts a system etcd on 2379; yunkai never uses it, and tests pick free ports.
echo "etcd is installed: $(etcd --version | head -1)"
