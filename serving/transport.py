"""What crosses the wire between yunkai processes: credentials, outgoing channels, server limits.

A server's limits (server_options) bound what one connection may hold: concurrent streams,
idle time, age, a handshake that never finishes; keepalive pings find peers that vanished.
Calls and streams per caller are the gate's (serving/authz.py).
"""

from __future__ import annotations

from typing import Any

import grpc

from serving.tls import Tls, resolve_tls

MESSAGE_BYTES_MAX = 16 * 1024 * 1024
STREAMS_PER_CONNECTION_MAX = 256
HANDSHAKE_TIMEOUT_MS = 10_000
KEEPALIVE_MS = 30_000
KEEPALIVE_TIMEOUT_MS = 10_000
CONNECTION_IDLE_MS_MAX = 10 * 60_000
# A connection is asked to go away after an hour (GOAWAY; clients reconnect at once) so no
# caller pins one forever; what it has in flight, a slot copy included, gets the grace.
CONNECTION_AGE_MS_MAX = 60 * 60_000
CONNECTION_AGE_GRACE_MS = 15 * 60_000


def server_credentials(tls: Tls | None) -> grpc.ServerCredentials | None:
    """Mutual TLS with `tls`, or None (plaintext, --insecure)."""
    return None if tls is None else tls.server_credentials()


def client_credentials(tls: Tls | None) -> grpc.ChannelCredentials | None:
    """Credentials for calls to other yunkai processes: mutual TLS with `tls`, or None (plaintext)."""
    return None if tls is None else tls.channel_credentials()


def channel(
    address: str, credentials: grpc.ChannelCredentials | None, options: list[tuple[str, Any]]
) -> grpc.aio.Channel:
    """An outgoing channel: TLS when credentials are given, else plaintext."""
    if credentials is None:
        return grpc.aio.insecure_channel(address, options=options)
    return grpc.aio.secure_channel(address, credentials, options=options)


def sync_channel(address: str, tls: Tls | None, options: list[tuple[str, Any]] | None = None) -> grpc.Channel:
    """A blocking channel for command-line tools: mutual TLS with `tls`, else plaintext."""
    if tls is None:
        return grpc.insecure_channel(address, options=options)
    return grpc.secure_channel(address, tls.channel_credentials(), options=options)


def role_channel(address: str, role: str, options: list[tuple[str, Any]] | None = None) -> grpc.aio.Channel:
    """An outgoing channel as `role`, with the certificate YUNKAI_TLS_DIR holds for it (plaintext
    under YUNKAI_INSECURE=1): for tools that call servers of a cluster they started or were
    pointed at (benchmarks, load tests)."""
    return channel(address, client_credentials(resolve_tls(None, role, False, role)), options or [])


def sync_role_channel(address: str, role: str, options: list[tuple[str, Any]] | None = None) -> grpc.Channel:
    """The blocking `role_channel`."""
    return sync_channel(address, resolve_tls(None, role, False, role), options)


def server_options(reuse_port: bool = False) -> list[tuple[str, Any]]:
    return [
        ("grpc.max_receive_message_length", MESSAGE_BYTES_MAX),
        ("grpc.max_send_message_length", MESSAGE_BYTES_MAX),
        ("grpc.so_reuseport", 1 if reuse_port else 0),
        ("grpc.max_concurrent_streams", STREAMS_PER_CONNECTION_MAX),
        ("grpc.server_handshake_timeout_ms", HANDSHAKE_TIMEOUT_MS),
        ("grpc.keepalive_time_ms", KEEPALIVE_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.max_connection_idle_ms", CONNECTION_IDLE_MS_MAX),
        ("grpc.max_connection_age_ms", CONNECTION_AGE_MS_MAX),
        ("grpc.max_connection_age_grace_ms", CONNECTION_AGE_GRACE_MS),
        # Clients' keepalive pings (ours send none by default) at most every 10 s, even idle.
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


def new_server(
    reuse_port: bool = False, interceptors: list[grpc.aio.ServerInterceptor] | None = None
) -> grpc.aio.Server:
    """A server with our limits; with `reuse_port`, its ports are shared (SO_REUSEPORT) with the
    other worker processes of the same service, and the kernel spreads connections among them."""
    return grpc.aio.server(interceptors=interceptors or [], options=server_options(reuse_port))
