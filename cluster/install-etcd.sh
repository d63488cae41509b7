#!/usr/bin/env bash
# Install etcd, the metastore of clusters with more than one router (`yunkai router
# --metastore etcd://...`; DESIGN section 6a), Debian's etcd-server package. Tests start their
# own throwaway etcd on loopback in a temporary directory; the package starts a system etcd on
# 2379, which yunkai never uses (tests pick free ports).
set -euo pipefail
exec bash "$(dirname "$0")/install-debian.sh" etcd etcd-server
