"""Plumbing every yunkai gRPC server shares (DESIGN section 9), below every server and above proto/.

  config      settings from flags, YUNKAI_<SECTION>_<NAME>, a TOML file, defaults; JSON logs
  handlers    the one unary handler wrapper (refusals -> statuses, metrics) and request parsing
  bootstrap   the one server bootstrap: listen, health, reflection, metrics, serve, stop on SIGTERM
  transport   TLS credentials, outgoing channels, message limits
  retry       the one jittered exponential backoff
  store       an application server's own small RocksDB

The names callers use are re-exported here: `import serving; serving.unary_service(...)`.
"""

from serving.bootstrap import Serving, StartupError, main, serve, start_metrics, stop_signal
from serving.config import add_common_arguments, resolve, setup_logging
from serving.handlers import BadRequest, Context, Handler, Refusals, Refused, parse_request, refusal, unary_service
from serving.retry import backoff_s
from serving.store import open_store
from serving.transport import MESSAGE_BYTES_MAX, channel, client_credentials, new_server, server_credentials

__all__ = [
    "MESSAGE_BYTES_MAX",
    "BadRequest",
    "Context",
    "Handler",
    "Refusals",
    "Refused",
    "Serving",
    "StartupError",
    "add_common_arguments",
    "backoff_s",
    "channel",
    "client_credentials",
    "main",
    "new_server",
    "open_store",
    "parse_request",
    "refusal",
    "resolve",
    "serve",
    "server_credentials",
    "setup_logging",
    "start_metrics",
    "stop_signal",
    "unary_service",
]
