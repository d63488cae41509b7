"""`yunkai certs`: a development CA and the certificates of yunkai identities (serving/tls.py).

    yunkai certs init  --dir D [--host H ...]     CA (if D has none) + one certificate per role + etcd's set
    yunkai certs issue --dir D --role R --name N  one more identity (a node of its own, an operator)
    yunkai certs show  --dir D                    each certificate's identity, hosts and expiry

Keys are ECDSA P-256 (fast handshakes); each leaf names its identity as a SAN URI
(spiffe://yunkai/<role>/<name>). The certificates of roles that serve (node, router,
scoring, lending, risk) also name the hosts they serve on as DNS/IP SANs (always localhost,
127.0.0.1 and ::1; --host adds the addresses other hosts reach them at) and are good for
server and client authentication; the others (operator, service, partner) only call, and
are good for client authentication alone, so that their keys cannot stand in for a server.
Built with `cryptography` (pyca), not by hand. Keys are written 0600 in a 0700 directory.
This is a development CA: a bank's own CA issues the same shape of certificate (README,
"Identities").
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from serving.tls import ROLES, SERVER_ROLES, TLS_DIR_ENV, Identity, check_name, spiffe_uris

DAYS_DEFAULT = 365
CA_DAYS = 3650
_LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")


def init(directory: str, hosts: Sequence[str] = (), days: int = DAYS_DEFAULT) -> list[Path]:
    """A CA in `directory` (kept if there is one) and a certificate named after each role
    that has none yet, and the etcd set (a CA of its own, etcd's server certificate and the
    routers' client certificate). Returns the files written (none when all were there)."""
    base = _directory(directory)
    written: list[Path] = []
    if not (base / "ca.pem").exists():
        written += _make_ca(base, "ca", "yunkai development CA")
    for role in ROLES:
        if not (base / f"{role}.pem").exists():
            written += issue(directory, role, role, hosts, days)
    if not (base / "etcd-ca.pem").exists():
        written += _make_ca(base, "etcd-ca", "yunkai etcd development CA")
    for name, serves in (("etcd-server", True), ("etcd-client", False)):
        if not (base / f"{name}.pem").exists():
            written += _issue_etcd(base, name, serves, hosts, days)
    return written


def issue(directory: str, role: str, name: str, hosts: Sequence[str] = (), days: int = DAYS_DEFAULT) -> list[Path]:
    """A certificate for spiffe://yunkai/<role>/<name>, signed by the CA in `directory`."""
    problem = check_name(role, name)
    if problem is not None:
        raise ValueError(problem)
    uri = Identity(role, name).uri
    serves = role in SERVER_ROLES
    sans = [x509.UniformResourceIdentifier(uri), *(_sans(hosts) if serves else [])]
    return _leaf(_directory(directory), "ca", name, uri, sans, serves, days)


def _issue_etcd(base: Path, name: str, serves: bool, hosts: Sequence[str], days: int) -> list[Path]:
    """etcd's server certificate, or the routers' client certificate for etcd (etcd-ca signs both)."""
    return _leaf(base, "etcd-ca", name, f"yunkai {name}", _sans(hosts) if serves else [], serves, days)


def _leaf(
    base: Path, ca_file: str, name: str, common_name: str, sans: list[x509.GeneralName], serves: bool, days: int
) -> list[Path]:
    """<name>.pem and <name>.key, signed by the CA <ca_file>: good for client authentication,
    and for server authentication too when it `serves`."""
    ca_cert, ca_key = _load_ca(base, ca_file)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH, *([ExtendedKeyUsageOID.SERVER_AUTH] if serves else [])]
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return [_write(base / f"{name}.key", _key_pem(key)), _write(base / f"{name}.pem", _cert_pem(cert))]


def show(directory: str) -> list[str]:
    """One line per certificate in `directory`: file, identity, hosts, expiry."""
    lines = []
    for path in sorted(Path(directory).glob("*.pem")):
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        names = _alternative_names(cert)
        uris = spiffe_uris(cert)
        hosts = [*names.get_values_for_type(x509.DNSName), *map(str, names.get_values_for_type(x509.IPAddress))]
        who = uris[0] if uris else cert.subject.rfc4514_string()
        lines.append(f"{path.name:<16} {who:<40} until {cert.not_valid_after_utc:%Y-%m-%d}  {' '.join(hosts)}")
    return lines


def _alternative_names(cert: x509.Certificate) -> x509.SubjectAlternativeName:
    try:
        return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return x509.SubjectAlternativeName([])


def _make_ca(base: Path, file: str, title: str) -> list[Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{title} ({base.resolve().name})")])
    now = datetime.datetime.now(datetime.UTC)
    usage = x509.KeyUsage(
        digital_signature=True,
        key_cert_sign=True,
        crl_sign=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        encipher_only=False,
        decipher_only=False,
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .sign(key, hashes.SHA256())
    )
    return [_write(base / f"{file}.key", _key_pem(key)), _write(base / f"{file}.pem", _cert_pem(cert))]


def _load_ca(base: Path, file: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    if not (base / f"{file}.key").exists():
        raise ValueError(f"{base / file}.key: no CA key here (certificates are issued where the CA's key is kept)")
    cert = x509.load_pem_x509_certificate((base / f"{file}.pem").read_bytes())
    key = serialization.load_pem_private_key((base / f"{file}.key").read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{base / file}.key: not an EC key")
    return cert, key


def _sans(hosts: Sequence[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys([*_LOCAL_HOSTS, *hosts]):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _directory(directory: str) -> Path:
    base = Path(directory)
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    return base


def _write(path: Path, data: bytes) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # a file that was there keeps its mode through O_CREAT: not a key's
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    return path


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="certs_command", required=True, metavar="ACTION")
    made = actions.add_parser("init", help="a development CA and a certificate per role (kept if present)")
    made.add_argument("--dir", default=os.environ.get(TLS_DIR_ENV), help=f"the TLS directory (or {TLS_DIR_ENV})")
    made.add_argument("--host", action="append", default=[], help="a host name or address servers are reached at")
    made.add_argument("--days", type=int, default=DAYS_DEFAULT, help=f"validity (default {DAYS_DEFAULT})")
    one = actions.add_parser("issue", help="a certificate for one more identity")
    one.add_argument("--dir", default=os.environ.get(TLS_DIR_ENV), help=f"the TLS directory (or {TLS_DIR_ENV})")
    one.add_argument("--role", required=True, choices=ROLES)
    one.add_argument("--name", required=True, help="the identity's name: files <name>.pem and <name>.key")
    one.add_argument("--host", action="append", default=[], help="a host name or address it serves on")
    one.add_argument("--days", type=int, default=DAYS_DEFAULT, help=f"validity (default {DAYS_DEFAULT})")
    listed = actions.add_parser("show", help="each certificate's identity, hosts and expiry")
    listed.add_argument("--dir", default=os.environ.get(TLS_DIR_ENV), help=f"the TLS directory (or {TLS_DIR_ENV})")


def main(args: argparse.Namespace) -> int:
    if not args.dir:
        print(f"yunkai certs: --dir is required (or {TLS_DIR_ENV})", file=sys.stderr)
        return 2
    try:
        if args.certs_command == "init":
            written = init(args.dir, args.host, args.days)
        elif args.certs_command == "issue":
            written = issue(args.dir, args.role, args.name, args.host, args.days)
        else:
            print("\n".join(show(args.dir)))
            return 0
    except (ValueError, OSError) as error:
        print(f"yunkai certs: {error}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    if not written:
        print(f"{args.dir}: every role has a certificate already")
    return 0
