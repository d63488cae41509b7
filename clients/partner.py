"""The partners' Python client of the open platform (HTTPS/JSON, gateway/api.py), on httpx.

Gets and renews its OAuth2 token (client credentials) by itself, sends an Idempotency-Key with
every POST (derived from the call's own ids unless given, so a retry of the same call reuses
it), and retries a call the gateway could not finish (503, a connection lost, a request still
running) with the same key: nothing is done twice. Refusals raise `PartnerApiError` with the
gateway's status, code and message. `ROUTES` lists every route it calls: the tests check them
against the gateway's /openapi.json.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ssl
import time
from collections.abc import Mapping
from typing import Any

import httpx

ROUTES = (
    ("post", "/oauth/token"),
    ("post", "/v1/customers"),
    ("get", "/v1/customers/{customer_ref}"),
    ("get", "/v1/customers/{customer_ref}/statement"),
    ("post", "/v1/applications"),
    ("get", "/v1/applications/{application_ref}"),
    ("put", "/v1/loans/{loan_ref}/agreement"),
    ("post", "/v1/loans"),
    ("get", "/v1/loans/{loan_ref}"),
    ("post", "/v1/loans/{loan_ref}/repayments"),
    ("get", "/v1/events"),
    ("post", "/v1/h5/sessions"),
)
SIGNATURE_TOLERANCE_S = 300  # a webhook signed longer ago than this is refused (a replay)
TIMEOUT_S = 30.0
RETRIES = 4
RENEW_BEFORE_S = 30  # a token this close to its expiry is renewed first


class PartnerApiError(Exception):
    """A call the gateway refused: its HTTP status, the error code and message."""

    def __init__(self, status: int, code: str, message: str, retry_after_s: int | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s


class PartnerClient:
    """One app's calls to the gateway at `base_url` ("https://host:port")."""

    def __init__(
        self,
        base_url: str,
        client_id: str,
        client_secret: str,
        *,
        verify: ssl.SSLContext | str | bool = True,
        scopes: tuple[str, ...] = (),
        timeout_s: float = TIMEOUT_S,
    ) -> None:
        self.client_id = client_id
        self._secret = client_secret
        self._scopes = scopes
        if isinstance(verify, str):  # a CA file: the bank's (a sandbox's own CA, say)
            verify = ssl.create_default_context(cafile=verify)
        self._http = httpx.Client(base_url=base_url, verify=verify, timeout=timeout_s)
        self._token = ""
        self._token_until = 0.0

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> PartnerClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # --- tokens ------------------------------------------------------------------------------

    def token(self) -> str:
        """A token valid for at least RENEW_BEFORE_S more (asked for anew when it is not)."""
        if time.monotonic() < self._token_until - RENEW_BEFORE_S:
            return self._token
        form = {"grant_type": "client_credentials"}
        if self._scopes:
            form["scope"] = " ".join(self._scopes)
        reply = self._http.post("/oauth/token", data=form, auth=(self.client_id, self._secret))
        body = _checked(reply)
        self._token = str(body["access_token"])
        self._token_until = time.monotonic() + int(body["expires_in"])
        return self._token

    # --- the journey ---------------------------------------------------------------------------

    def onboard_customer(self, customer_ref: str, name: str, idempotency_key: str = "") -> dict[str, Any]:
        body = {"customer_ref": customer_ref, "name": name}
        return self._call("post", "/v1/customers", body, idempotency_key or f"customer.{customer_ref}")

    def customer(self, customer_ref: str) -> dict[str, Any]:
        return self._call("get", f"/v1/customers/{customer_ref}")

    def statement(self, customer_ref: str, limit: int = 50) -> dict[str, Any]:
        return self._call("get", f"/v1/customers/{customer_ref}/statement", params={"limit": limit})

    def apply(
        self,
        application_ref: str,
        customer_ref: str,
        product: str,
        amount_requested_fen: int,
        fields: Mapping[str, float],
        documents: Mapping[str, bytes] | None = None,
        idempotency_key: str = "",
    ) -> dict[str, Any]:
        body = {
            "application_ref": application_ref,
            "customer_ref": customer_ref,
            "product": product,
            "amount_requested_fen": amount_requested_fen,
            "fields": dict(fields),
            "documents": [
                {"name": name, "content_base64": base64.b64encode(data).decode()}
                for name, data in (documents or {}).items()
            ],
        }
        return self._call("post", "/v1/applications", body, idempotency_key or f"application.{application_ref}")

    def application(self, application_ref: str) -> dict[str, Any]:
        return self._call("get", f"/v1/applications/{application_ref}")

    def sign_agreement(self, loan_ref: str, customer_ref: str, document: bytes) -> dict[str, Any]:
        body = {"customer_ref": customer_ref, "document_base64": base64.b64encode(document).decode()}
        return self._call("put", f"/v1/loans/{loan_ref}/agreement", body)

    def draw(
        self,
        loan_ref: str,
        customer_ref: str,
        product: str,
        amount_fen: int,
        date: str,
        annual_rate_bps: int = 0,
        term_months: int = 0,
        idempotency_key: str = "",
    ) -> dict[str, Any]:
        body = {
            "loan_ref": loan_ref,
            "customer_ref": customer_ref,
            "product": product,
            "amount_fen": amount_fen,
            "date": date,
            "annual_rate_bps": annual_rate_bps,
            "term_months": term_months,
        }
        return self._call("post", "/v1/loans", body, idempotency_key or f"loan.{loan_ref}")

    def loan(self, loan_ref: str) -> dict[str, Any]:
        return self._call("get", f"/v1/loans/{loan_ref}")

    def repay(
        self, loan_ref: str, repayment_ref: str, amount_fen: int, date: str, idempotency_key: str = ""
    ) -> dict[str, Any]:
        body = {"repayment_ref": repayment_ref, "amount_fen": amount_fen, "date": date}
        key = idempotency_key or f"repayment.{loan_ref}.{repayment_ref}"
        return self._call("post", f"/v1/loans/{loan_ref}/repayments", body, key)

    def h5_session(
        self,
        customer_ref: str,
        product: str,
        fields: Mapping[str, float],
        brand_name: str,
        brand_colour: str = "#1a5fb4",
    ) -> dict[str, Any]:
        """A session on the hosted pages for one customer: {"url": ..., "expires_in": ...}; the URL is
        relative to the gateway (open base_url + url in the customer's browser)."""
        body = {
            "customer_ref": customer_ref,
            "product": product,
            "fields": dict(fields),
            "brand_name": brand_name,
            "brand_colour": brand_colour,
        }
        return self._call("post", "/v1/h5/sessions", body, f"h5.{customer_ref}.{time.time_ns()}")

    def events(self, limit: int = 50) -> dict[str, Any]:
        """The partner's latest events with their delivery to this app's webhook (the delivery log)."""
        return self._call("get", "/v1/events", params={"limit": limit})

    # --- the wire ------------------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        idempotency_key: str = "",
        params: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        for attempt in range(RETRIES + 1):
            headers = {"Authorization": f"Bearer {self.token()}"}
            if idempotency_key:
                headers["Idempotency-Key"] = idempotency_key
            try:
                reply = self._http.request(method, path, json=body, headers=headers, params=params)
            except httpx.TransportError:
                if attempt == RETRIES:
                    raise
                time.sleep(0.2 * (attempt + 1))
                continue
            retryable = reply.status_code == 503 or (reply.status_code == 409 and "retry-after" in reply.headers)
            if retryable and attempt < RETRIES:
                time.sleep(min(float(reply.headers.get("retry-after", "0.2")), 2.0))
                continue
            return _checked(reply)
        raise AssertionError("unreachable: the last attempt returns or raises")


def verify_signature(
    signing_secret_hex: str,
    header: str,
    body: bytes,
    now_s: float | None = None,
    tolerance_s: int = SIGNATURE_TOLERANCE_S,
) -> bool:
    """Whether a webhook's `Yunkai-Signature` header (t=<unix s>,v1=<hex>) signs `body` with the
    app's signing secret, within `tolerance_s` of now (gateway/webhooks.py)."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(fields["t"])
        expected = hmac.new(bytes.fromhex(signing_secret_hex), b"%d." % timestamp + body, hashlib.sha256).hexdigest()
    except (KeyError, ValueError):
        return False
    fresh = abs((time.time() if now_s is None else now_s) - timestamp) <= tolerance_s
    return fresh and hmac.compare_digest(expected, fields.get("v1", ""))


def _checked(reply: httpx.Response) -> dict[str, Any]:
    try:
        body = reply.json()
    except ValueError:
        body = {"error": "bad_answer", "message": reply.text[:200]}
    if reply.status_code >= 400:
        retry = reply.headers.get("retry-after")
        raise PartnerApiError(
            reply.status_code,
            str(body.get("error", "")),
            str(body.get("message", "")),
            int(retry) if retry and retry.isdigit() else None,
        )
    assert isinstance(body, dict), body
    return body
