"""The partners' docs page (`/docs`): the OpenAPI document rendered as one readable HTML page.

Rendered on the server from the same document as /openapi.json, with no script and nothing
fetched from elsewhere (a partner's browser, or a closed network, needs nothing more): the
five onboarding steps, then every route with its parameters, body fields and answers.
"""

from __future__ import annotations

from html import escape
from typing import Any

STEPS = (
    "Get sandbox credentials from the bank: a client id (<code>&lt;partner&gt;.&lt;app&gt;</code>) and secret,"
    " with the scopes (API groups) your app needs.",
    "Ask for a token: <code>POST /oauth/token</code> with <code>grant_type=client_credentials</code> and your"
    " id and secret (HTTP Basic). Send it as <code>Authorization: Bearer &lt;token&gt;</code>.",
    "Onboard a customer (<code>POST /v1/customers</code>) and apply for credit"
    " (<code>POST /v1/applications</code>): an approval opens the customer's credit line.",
    "Sign the loan agreement (<code>PUT /v1/loans/{loan_ref}/agreement</code>), draw down"
    " (<code>POST /v1/loans</code>) and repay (<code>POST /v1/loans/{loan_ref}/repayments</code>).",
    "Go live: the same calls with production credentials. Send an <code>Idempotency-Key</code> with every POST"
    " and retry with the same key: nothing is done twice.",
)


def page(document: dict[str, Any]) -> str:
    info = document.get("info", {})
    schemas = document.get("components", {}).get("schemas", {})
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>{escape(info.get('title', ''))}</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:auto;padding:1em;line-height:1.4}"
        "code{background:#f3f3f3;padding:0 .2em}section{border-top:1px solid #ccc;margin-top:1em}"
        ".method{font-weight:bold;margin-right:.5em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ddd;padding:.2em .5em;text-align:left}</style></head><body>",
        f"<h1>{escape(info.get('title', ''))} <small>v{escape(info.get('version', ''))}</small></h1>",
        f"<p>{escape(info.get('description', ''))}</p>",
        "<h2>Onboarding in five steps</h2><ol>",
        *(f"<li>{step}</li>" for step in STEPS),
        "</ol><p>The machine-readable description: <a href='/openapi.json'>/openapi.json</a> (OpenAPI 3).</p>",
        "<h2>Routes</h2>",
    ]
    for path, operations in document.get("paths", {}).items():
        for method, operation in operations.items():
            parts.append(_operation(path, method, operation, schemas))
    parts.append("</body></html>")
    return "".join(parts)


def _operation(path: str, method: str, operation: dict[str, Any], schemas: dict[str, Any]) -> str:
    anchor = escape(operation.get("operationId", f"{method}-{path}"))
    parts = [
        f"<section id='{anchor}'><h3><span class='method'>{escape(method.upper())}</span>"
        f"<code>{escape(path)}</code></h3>",
        f"<p>{escape(operation.get('description', operation.get('summary', '')))}</p>",
    ]
    tags = operation.get("tags")
    if tags:
        parts.append(f"<p>Scope: <code>{escape(', '.join(tags))}</code></p>")
    parameters = operation.get("parameters", [])
    if parameters:
        parts.append("<table><tr><th>parameter</th><th>in</th><th>required</th><th>schema</th></tr>")
        for p in parameters:
            parts.append(
                f"<tr><td><code>{escape(p['name'])}</code></td><td>{escape(p['in'])}</td>"
                f"<td>{'yes' if p.get('required') else 'no'}</td><td>{escape(_schema(p.get('schema', {})))}</td></tr>"
            )
        parts.append("</table>")
    body = operation.get("requestBody", {}).get("content", {})
    for media, content in body.items():
        parts.append(f"<p>Body ({escape(media)}):</p>{_fields(content.get('schema', {}), schemas)}")
    answers = operation.get("responses", {})
    listed = ", ".join(f"{escape(code)} {escape(r.get('description', ''))}" for code, r in answers.items())
    parts.append(f"<p>Answers: {listed}</p></section>")
    return "".join(parts)


def _fields(schema: dict[str, Any], schemas: dict[str, Any]) -> str:
    resolved = _resolve(schema, schemas)
    properties = resolved.get("properties", {})
    if not properties:
        return f"<p><code>{escape(_schema(schema))}</code></p>"
    required = set(resolved.get("required", []))
    rows = [
        f"<tr><td><code>{escape(name)}</code></td><td>{'yes' if name in required else 'no'}</td>"
        f"<td>{escape(_schema(field))}</td><td>{escape(field.get('description', ''))}</td></tr>"
        for name, field in properties.items()
    ]
    return "<table><tr><th>field</th><th>required</th><th>schema</th><th></th></tr>" + "".join(rows) + "</table>"


def _resolve(schema: dict[str, Any], schemas: dict[str, Any]) -> dict[str, Any]:
    reference = schema.get("$ref", "")
    if reference.startswith("#/components/schemas/"):
        found: dict[str, Any] = schemas.get(reference.rsplit("/", 1)[1], {})
        return found
    return schema


def _schema(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        return str(schema["$ref"]).rsplit("/", 1)[1]
    if "anyOf" in schema:
        return " or ".join(_schema(s) for s in schema["anyOf"])
    text = str(schema.get("type", "object"))
    if schema.get("type") == "array":
        text = f"array of {_schema(schema.get('items', {}))}"
    bounds = [
        f"{key} {schema[key]}"
        for key in ("pattern", "minimum", "maximum", "exclusiveMinimum", "minLength", "maxLength", "maxItems")
        if key in schema
    ]
    return f"{text} ({', '.join(bounds)})" if bounds else text
