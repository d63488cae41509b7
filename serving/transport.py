"""What crosses the wire between yunkai processes: TLS credentials, outgoing channels, server limits."""

from __future__ import annotations

from typing import Any

import grpc

MESSAGE_BYTES_MAX = 16 * 1024 * 1024


def server_credentials(cert_path: str | None, key_path: str | None) -> grpc.ServerCredentials | None:
    if not cert_path and not key_path:
        return None
    if not (cert_path and key_path):
        raise SystemExit("--tls-cert and --tls-key go together")
    with open(cert_path, "rb") as cert, open(key_path, "rb") as key:
        return grpc.ssl_server_credentials([(key.read(), cert.read())])


def client_credentials(ca_path: str | None) -> grpc.ChannelCredentials | None:
    """Credentials for calls to other yunkai processes: TLS trusting `ca_path`, or None (plaintext)."""
    if not ca_path:
        return None
    with open(ca_path, "rb") as handle:
        return grpc.ssl_channel_credentials(root_certificates=handle.read())


def channel(
    address: str, credentials: grpc.ChannelCredentials | None, options: list[tuple[str, Any]]
) -> grpc.aio.Channel:
    """An outgoing channel: TLS when credentials are given, else plaintext."""
    if credentials is None:
        return grpc.aio.insecure_channel(address, options=options)
    return grpc.aio.secure_channel(address, credentials, options=options)


def new_server(reuse_port: bool = False) -> grpc.aio.Server:
    """A server; with `reuse_port`, its ports are shared (SO_REUSEPORT) with the other worker
    processes of the same service, and the kernel spreads connections among them."""
    return grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MESSAGE_BYTES_MAX),
            ("grpc.max_send_message_length", MESSAGE_BYTES_MAX),
            ("grpc.so_reuseport", 1 if reuse_port else 0),
        ]
    )
