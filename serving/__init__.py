"""Plumbing every yunkai gRPC server shares (DESIGN section 9), below every server and above proto/.

  config      settings from flags, YUNKAI_<SECTION>_<NAME>, a TOML file, defaults; JSON logs
  handlers    the one unary handler wrapper (refusals -> statuses, metrics) and request parsing
  bootstrap   the one server bootstrap: listen, health, reflection, metrics, serve, stop on SIGTERM
  tls         identities (spiffe://yunkai/<role>/<name>) and the mutual-TLS material that proves them
  certs       `yunkai certs`: a development CA and its certificates (imported only by that command)
  authz       who may call what (one table), enforced with per-caller limits by one interceptor
  transport   credentials, outgoing channels, message and connection limits
  retry       the one jittered exponential backoff
  streams     open-ended streams, ended when the server stops
  session     many unary calls of one service on one stream (both ends)
  store       an application server's own small RocksDB
  files       what a process writes is its user's: directories 0700, files 0600
  audit       the audit log: one hash-chained, fsync'd line per call, and its verifier

The names callers use are re-exported here: `import serving; serving.unary_service(...)`.
"""

from serving.audit import AuditLog, AuditUnavailable
from serving.authz import caller
from serving.bootstrap import Serving, main, serve, start_metrics, stop_signal
from serving.config import add_common_arguments, resolve, setup_logging
from serving.handlers import (
    BadRequest,
    Context,
    Handler,
    Refusals,
    Refused,
    StartupError,
    parse_request,
    refusal,
    unary_service,
)
from serving.retry import backoff_s
from serving.session import SessionStub
from serving.streams import open_ended
from serving.tls import Identity, Tls, TlsError, add_tls_arguments, client_tls, resolve_tls
from serving.transport import (
    MESSAGE_BYTES_MAX,
    channel,
    client_credentials,
    new_server,
    server_credentials,
    sync_channel,
)

__all__ = [
    "MESSAGE_BYTES_MAX",
    "AuditLog",
    "AuditUnavailable",
    "BadRequest",
    "Context",
    "Handler",
    "Identity",
    "Refusals",
    "Refused",
    "Serving",
    "SessionStub",
    "StartupError",
    "Tls",
    "TlsError",
    "add_common_arguments",
    "add_tls_arguments",
    "backoff_s",
    "caller",
    "channel",
    "client_credentials",
    "client_tls",
    "main",
    "new_server",
    "open_ended",
    "parse_request",
    "refusal",
    "resolve",
    "resolve_tls",
    "serve",
    "server_credentials",
    "setup_logging",
    "start_metrics",
    "stop_signal",
    "sync_channel",
    "unary_service",
]
