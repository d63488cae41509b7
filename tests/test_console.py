"""The operator console (router/console.py) in a real headless browser: Debian's Chromium driven by
Playwright, presenting an operator's client certificate. The page shows the cluster's nodes,
slots, jobs, traffic and audit events; a screenshot is kept (test-artifacts/console.png). Without
a certificate the TLS handshake fails; with a certificate that is not an operator's the answer
is 403.

Chromium comes from cluster/install-chromium.sh (Debian's chromium; `make test` runs it)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from clients.ledger import Account, SyncLedgerClient, Transfer
from cluster.commands import LocalCluster
from tests.conftest import tls

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("YUNKAI_TEST_ARTIFACTS", ROOT / "test-artifacts"))
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CNY = 156


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, str]]:
    port = free_port()
    cluster = LocalCluster(
        str(tmp_path_factory.mktemp("console")), nodes=2, port=0, router_args=["--console-port", str(port)]
    ).start()
    try:
        # Through the router, so that its audit log (which the console shows) has the calls.
        with SyncLedgerClient(cluster.address, timeout_s=10, via_router=True) as sdk:
            assert all(r.ok for r in sdk.create_accounts([Account("{k1}:a", CNY, 1), Account("{k2}:b", CNY, 1)]))
            assert sdk.create_transfers([Transfer("t1", "{k1}:a", "{k2}:b", 5, CNY, 1)])[0].ok
        yield cluster, f"https://127.0.0.1:{port}"
    finally:
        cluster.stop()


def context_as(role: str | None) -> ssl.SSLContext:
    directory = Path(tls().directory)
    context = ssl.create_default_context(cafile=str(directory / "ca.pem"))
    context.check_hostname = False
    if role is not None:
        context.load_cert_chain(directory / f"{role}.pem", directory / f"{role}.key")
    return context


def test_only_an_operators_certificate_opens_the_console(console: tuple[LocalCluster, str]) -> None:
    _, url = console
    with urllib.request.urlopen(f"{url}/api/status", context=context_as("operator"), timeout=10) as answer:
        status = json.load(answer)
    assert len(status["nodes"]) == 2 and status["operator"].startswith("spiffe://yunkai/operator/")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{url}/api/status", context=context_as("service"), timeout=10)
    assert refused.value.code == 403
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionResetError)):
        urllib.request.urlopen(f"{url}/api/status", context=context_as(None), timeout=10).read()


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="no chromium: run cluster/install-chromium.sh")
def test_the_console_shows_the_cluster_in_a_real_browser(console: tuple[LocalCluster, str]) -> None:
    from playwright.sync_api import sync_playwright

    cluster, url = console
    directory = Path(tls().directory)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_context(
                ignore_https_errors=True,  # the development CA is not the browser's
                client_certificates=[
                    {"origin": url, "certPath": directory / "operator.pem", "keyPath": directory / "operator.key"}
                ],
                viewport={"width": 1280, "height": 1000},
            ).new_page()
            page.goto(url + "/")
            page.wait_for_selector("body[data-loaded=yes]", timeout=20_000)
            rows = page.locator("#nodes tbody tr")
            assert rows.count() == 2
            text = page.inner_text("#nodes")
            assert all(node.address in text for node in cluster.nodes) and text.count("ACTIVE") == 2
            assert "serving" in text and "imbalance" in text
            assert "you are spiffe://yunkai/operator/" in page.inner_text("#meta")
            assert page.locator("#audit tbody tr").count() >= 1  # the router audited the calls above
            page.screenshot(path=str(ARTIFACTS / "console.png"), full_page=True)
        finally:
            browser.close()
    assert (ARTIFACTS / "console.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
