"""Who a process is on the wire: identities and the mutual-TLS material that proves them.

An identity is a SAN URI `spiffe://yunkai/<role>/<name>` in an X.509 certificate signed by
the cluster's CA (the SPIFFE X.509-SVID convention, spiffe.io/docs/latest/specifications).
A TLS directory holds the CA every process trusts and the certificates of the identities
kept there:

    <dir>/ca.pem                  the CA's certificate (every process trusts it)
    <dir>/ca.key                  the CA's key (only where certificates are issued: `yunkai certs`)
    <dir>/<name>.pem, <name>.key  one identity's certificate chain and key (mode 0600)

The control plane's etcd has a CA of its own in the same directory (etcd-ca.pem; the
server's etcd-server.pem/.key, the routers' etcd-client.pem/.key): etcd admits any
certificate its CA signed, so no yunkai identity but a router's, which holds the etcd client
certificate, can reach the shard map.

A process takes `--tls-dir DIR` (or YUNKAI_TLS_DIR) and `--tls-name NAME` (default: its role,
so `yunkai certs init`'s set works as is). Servers require a client certificate from the CA;
every outgoing call presents the process's own. Plaintext is only served or spoken with
`--insecure`, an explicit choice that is logged. A bank brings its own CA by putting its
CA certificate and the certificates it issued (with the SAN URIs above) into such a
directory; `yunkai certs` is only the development CA.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from proto.contract import CREATED_BY_LENGTH_MAX

TLS_DIR_ENV = "YUNKAI_TLS_DIR"
INSECURE_ENV = "YUNKAI_INSECURE"
SPIFFE_PREFIX = "spiffe://yunkai/"
ROLES = ("node", "router", "operator", "scoring", "lending", "risk", "service", "partner", "gateway")
# The roles that serve: their certificates name the hosts they are reached at. The others
# only call, and their certificates cannot stand in for a server's.
SERVER_ROLES = ("node", "router", "scoring", "lending", "risk", "gateway")
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
NAME_LENGTH_MAX = 63
# Every identity fits the field the ledger stamps it in (proto/contract.py sizes events with it).
assert len(SPIFFE_PREFIX) + max(map(len, ROLES)) + 1 + NAME_LENGTH_MAX <= CREATED_BY_LENGTH_MAX

log = logging.getLogger("yunkai.tls")


class TlsError(Exception):
    """TLS is not set up as asked (the message says what is missing and how to make it)."""


@dataclass(frozen=True)
class Identity:
    """A caller: its role (what it may do) and its name (who it is, for audit and limits)."""

    role: str
    name: str

    @property
    def uri(self) -> str:
        return f"{SPIFFE_PREFIX}{self.role}/{self.name}"

    @classmethod
    def parse(cls, uri: str) -> Identity | None:
        """The identity a SAN URI names, or None if it is not a well-formed yunkai identity."""
        if not uri.startswith(SPIFFE_PREFIX):
            return None
        role, _, name = uri[len(SPIFFE_PREFIX) :].partition("/")
        if role not in ROLES or not _NAME.fullmatch(name):
            return None
        return cls(role, name)

    def __str__(self) -> str:
        return self.uri


def check_name(role: str, name: str) -> str | None:
    """Why (role, name) cannot be an identity, or None if it can."""
    if role not in ROLES:
        return f"role {role!r} is not one of {', '.join(ROLES)}"
    if not _NAME.fullmatch(name):
        return f"name {name!r} must be 1-63 of a-z 0-9 . _ - (starting with a letter or digit)"
    if name in ("ca", "etcd-ca", "etcd-server", "etcd-client"):
        return f"name {name!r} is taken: the CAs' and etcd's files (ca, etcd-ca, etcd-server, etcd-client)"
    return None


@dataclass(frozen=True)
class Tls:
    """One process's TLS material: the CA it trusts, its own certificate chain and key."""

    directory: str
    name: str
    ca: bytes = field(repr=False)
    cert: bytes = field(repr=False)
    key: bytes = field(repr=False)  # never printed or logged

    @classmethod
    def load(cls, directory: str, name: str) -> Tls:
        base = Path(directory)
        paths = [base / "ca.pem", base / f"{name}.pem", base / f"{name}.key"]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise TlsError(
                f"{', '.join(missing)}: not found (`yunkai certs init --dir {directory}` makes a development CA"
                f" and a certificate per role; `yunkai certs issue --dir {directory} --role ROLE --name {name}`"
                " makes another)"
            )
        ca, cert, key = (p.read_bytes() for p in paths)
        return cls(directory, name, ca, cert, key)

    def identity(self) -> Identity | None:
        """The identity this process's own certificate proves (None if it proves none)."""
        return certificate_identity(self.cert)

    def server_credentials(self) -> grpc.ServerCredentials:
        """Serve TLS and require a client certificate signed by the CA (mutual TLS)."""
        return grpc.ssl_server_credentials([(self.key, self.cert)], root_certificates=self.ca, require_client_auth=True)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Call over TLS, trusting only the CA, presenting this process's certificate."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )


def not_after(pem: bytes) -> float:
    """When a certificate (the first of a PEM chain) expires, Unix seconds."""
    from cryptography import x509  # loaded only by the processes that read a certificate

    return x509.load_pem_x509_certificate(pem).not_valid_after_utc.timestamp()


def certificate_identity(pem: bytes) -> Identity | None:
    """The yunkai identity a certificate (the first of a PEM chain) proves: its one
    spiffe://yunkai/ URI SAN, or None without exactly one well-formed one."""
    from cryptography import x509  # loaded only by the processes that read a certificate

    uris = spiffe_uris(x509.load_pem_x509_certificate(pem))
    return Identity.parse(uris[0]) if len(uris) == 1 else None


def spiffe_uris(cert: Any) -> list[str]:
    """The spiffe://yunkai/ URI SANs of a cryptography x509.Certificate."""
    from cryptography import x509

    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [u for u in names.get_values_for_type(x509.UniformResourceIdentifier) if u.startswith(SPIFFE_PREFIX)]


ETCD_FILES = ("etcd-ca.pem", "etcd-client.pem", "etcd-client.key")


def etcd_credentials(directory: str) -> grpc.ChannelCredentials:
    """A router's credentials for etcd: the etcd CA, and the etcd client certificate."""
    paths = [Path(directory) / name for name in ETCD_FILES]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise TlsError(
            f"{', '.join(missing)}: not found: etcd is spoken to with its own CA and client certificate"
            f" (`yunkai certs init --dir {directory}` makes them; a bank's etcd CA issues the same files)"
        )
    ca, cert, key = (p.read_bytes() for p in paths)
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


def resolve_tls(tls_dir: str | None, tls_name: str | None, insecure: bool, role: str) -> Tls | None:
    """The TLS material a process uses, or None for plaintext (only when `insecure`).

    `tls_dir` falls back to YUNKAI_TLS_DIR, `insecure` to YUNKAI_INSECURE=1, the name to the
    process's role. Neither a directory nor --insecure is an error: plaintext is never a
    default."""
    directory = tls_dir or os.environ.get(TLS_DIR_ENV) or None
    if insecure or (directory is None and os.environ.get(INSECURE_ENV, "") in ("1", "true", "yes")):
        return None
    if directory is None:
        raise TlsError(
            f"no TLS directory: pass --tls-dir DIR (or set {TLS_DIR_ENV}) holding ca.pem and this process's"
            f" certificate (`yunkai certs init --dir DIR` makes a development set), or --insecure for plaintext"
        )
    return Tls.load(directory, tls_name or role)


def warn_insecure(what: str) -> None:
    """Plaintext is an explicit choice, and it is logged as one."""
    log.warning(
        "plaintext, no identities",
        extra={"what": what, "why": "--insecure: anyone who reaches this port is trusted, nothing is encrypted"},
    )


def add_tls_arguments(parser: Any) -> None:
    """The flags of every command that calls or serves over the network."""
    parser.add_argument("--tls-dir", help=f"directory with ca.pem and this process's certificate (or {TLS_DIR_ENV})")
    parser.add_argument("--tls-name", help="which certificate in --tls-dir to use (default: the command's role)")
    parser.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help=f"plaintext: no TLS, no identities, no authorization (or {INSECURE_ENV}=1); logged as a warning",
    )


def client_tls(args: Any, role: str) -> Tls | None:
    """The TLS material of a command-line client from its parsed --tls-dir/--tls-name/--insecure."""
    return resolve_tls(
        getattr(args, "tls_dir", None), getattr(args, "tls_name", None), bool(getattr(args, "insecure", False)), role
    )
