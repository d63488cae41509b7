"""yunkai.gateway.v1.Partners: the operators' registry calls (gRPC, mutual TLS, operator role only).

A thin shell over gateway/registry.py: requests parsed, refusals answered (INVALID_ARGUMENT
naming the field, NOT_FOUND, ALREADY_EXISTS), each call audited by the server's gate.
"""

from __future__ import annotations

import logging

import grpc
from google.protobuf.message import Message
from prometheus_client import Counter, Histogram

import serving
from clients.ledger import LedgerError
from clients.records import CommitFailed, Conflict
from gateway import webhooks
from gateway.registry import AlreadyExists, BadRegistration, NotFound, Registry
from proto import gateway_pb2 as pb
from serving import Context, parse_request

log = logging.getLogger("yunkai.gateway")

PARTNERS_SERVICE = "yunkai.gateway.v1.Partners"

REFUSALS: serving.Refusals = (
    (BadRegistration, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (Conflict, grpc.StatusCode.ABORTED),
    ((LedgerError, CommitFailed), grpc.StatusCode.UNAVAILABLE),
)
requests_total = Counter(
    "yunkai_gateway_admin_requests_total", "Partner registry calls, by method and status", ["method", "status"]
)
request_latency_s = Histogram("yunkai_gateway_admin_latency_seconds", "Partner registry call latency", ["method"])


def handler(registry: Registry, token_key: bytes) -> grpc.GenericRpcHandler:
    async def register(data: bytes, context: Context) -> Message:
        request = parse_request(pb.RegisterPartnerRequest, data)
        partner = await registry.register(request.partner_id, request.name)
        log.info("partner registered", extra={"partner": partner.partner_id})
        return partner

    async def list_partners(data: bytes, context: Context) -> Message:
        parse_request(pb.ListPartnersRequest, data)
        return pb.ListPartnersResponse(partners=await registry.list())

    async def add_app(data: bytes, context: Context) -> Message:
        credentials = await registry.add_app(parse_request(pb.AddAppRequest, data))
        log.info("app added", extra={"client_id": credentials.app.client_id})
        return credentials

    async def rotate(data: bytes, context: Context) -> Message:
        credentials = await registry.rotate(parse_request(pb.AppRef, data).client_id)
        log.info("client secret rotated", extra={"client_id": credentials.app.client_id})
        return credentials

    async def revoke(data: bytes, context: Context) -> Message:
        identifier = parse_request(pb.RevokeRequest, data).id
        revoked = await registry.revoke(identifier)
        log.warning("revoked", extra={"id": identifier, "apps": revoked})
        return pb.RevokeResponse(apps_revoked=revoked)

    async def set_webhook(data: bytes, context: Context) -> Message:
        request = parse_request(pb.SetWebhookRequest, data)
        app = await registry.set_webhook(request.client_id, request.url)
        log.info("webhook set", extra={"client_id": app.client_id, "url": app.webhook_url})
        secret = webhooks.secret_of(token_key, app.client_id, app.webhook_version)
        return pb.WebhookSecret(app=app, signing_secret=secret.hex())

    methods: dict[str, serving.Handler] = {
        "RegisterPartner": register,
        "ListPartners": list_partners,
        "AddApp": add_app,
        "RotateSecret": rotate,
        "Revoke": revoke,
        "SetWebhook": set_webhook,
    }
    return serving.unary_service(PARTNERS_SERVICE, methods, REFUSALS, requests_total, request_latency_s, log)
