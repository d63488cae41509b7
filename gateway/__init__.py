"""The open platform: partners run the lending journey over HTTPS/JSON (DESIGN section 11).

`yunkai gateway serve` is one process of the partner gateway: an HTTPS API (`/v1/...`,
gateway/api.py) that partners' apps call with OAuth2 bearer tokens, and the operators' admin
service (yunkai.gateway.v1.Partners, gRPC over mutual TLS, gateway/admin.py). The gateway
calls yunkai's services (risk, lending, the ledger through its routers) with its own identity
(spiffe://yunkai/gateway/<name>); partners never reach them. It keeps nothing on its own disk
but its audit log: the registry, idempotency records and the partners' customers are its
slot-local records on the ledger (clients/records.py, set "gw"), replicated with the slots,
so several gateway processes serve one port (SO_REUSEPORT) and a lost host loses nothing.

Partners and apps (gateway/registry.py)
  partner    Registered by an operator with a 4-character id ([a-z0-9]{4}). Every id a partner
             names is put behind its id: its customer "c42" is yunkai's customer "<pid>c42",
             its application "a1" yunkai's "<pid>-a1", its loan "l1" yunkai's "<pid>l1". So a
             partner can only ever name its own customers, applications and loans: another
             partner's are not found (404), never forbidden (403), and nobody learns they exist.
  app        "<pid>.<name>": a client id with scopes (API groups), a rate (calls a second) and
             a daily quota. Its client secret is shown once; the registry keeps a scrypt hash
             (RFC 7914, hashlib) and a secret version, one more at each rotation.
  revoked    A revoked partner's apps, and a revoked app, get no token, and the tokens they
             hold stop working once a process's registry cache is refreshed (REGISTRY_FRESH_S).

Tokens (gateway/tokens.py): OAuth2 client credentials (RFC 6749 section 4.4)
  POST /oauth/token with grant_type=client_credentials, the client id and secret (HTTP Basic,
  or form fields), and optionally `scope` (a subset of the app's). Answer: a JWT (RFC 7519,
  HS256, PyJWT) signed with the gateway's token key (a file every gateway process of one
  deployment shares), with the client id, partner, scopes, secret version and an expiry
  TOKEN_TTL_S away. Each API call checks the signature, the expiry, the scope of the route's
  API group, and, against the registry, that the app and partner are not revoked and the
  secret version is still current (a rotation ends the old secret's tokens).
  Failures: 401 with `WWW-Authenticate: Bearer error="invalid_token"` (none, bad, expired,
  revoked), 403 `insufficient_scope`; at the token endpoint 401 `invalid_client`, 400
  `unsupported_grant_type` / `invalid_scope` (RFC 6749 section 5.2).

Quotas (gateway/quotas.py): per app, a rate a second and a quota a day (24 hours from the
  window's first call), and token requests per client id and address, counted with the
  `limits` library in a store every process of the port shares (Redis; a single process may
  count in memory). A call over either gets 429 with Retry-After (seconds, rounded up). A
  quota store that does not answer fails the call 503: quotas are not silently dropped.

Safe retries (gateway/idempotency.py): every POST that changes something (all but the hosted
  pages' sessions, which only sign a token) carries an Idempotency-Key (1-64 of
  A-Z a-z 0-9 . _ : -); missing or malformed: 400. Per app and key, a record holds the SHA-256
  of the request (method, path, body) and, once answered, the status and body:
    1. no record: claim it (a commit expecting none, made before any read), run the call,
       answer, and store the answer while the caller is answered;
    2. a record with another request hash: 422, nothing runs;
    3. a record with the answer: that answer again, with `Idempotent-Replayed: true`;
    4. a record claimed but not answered (a retry racing the first call or its stored answer,
       or a gateway that died in between): wait up to ANSWER_WAIT_S for the answer (3), then
       409 until CLAIM_HELD_S, then the call runs again. That is safe because
       every downstream id derives from the partner's ids (a drawdown's loan id, a repayment's
       id, the funding transfer's id), which yunkai's services apply once.
  Only successes (2xx) are stored. A refusal or failure (4xx, 5xx) releases the key, so a
  retry runs the call again (the agreement it lacked may be signed by then; what a failed call
  did downstream is applied once whatever the retry does).

The journey (gateway/api.py; every route in /openapi.json, each in one API group = scope)
  customers     POST /v1/customers, GET /v1/customers/{ref}: onboard a customer (its deposit
                account opened on the ledger), read it with its balances.
  applications  POST /v1/applications (the application's fields and documents: each
                document's SHA-256 is stored with it), GET /v1/applications/{ref}: the decision
                (risk's Decide: an approval opens the customer's credit line).
  loans         PUT /v1/loans/{ref}/agreement (the signed agreement: its SHA-256 is stored
                and shown with the loan), POST /v1/loans (the drawdown; refused while no
                agreement is signed), GET /v1/loans/{ref} (the loan and its schedule).
  repayments    POST /v1/loans/{ref}/repayments: the amount collected by the partner moves
                from the partner's collection account to the customer's deposit, then repays
                the loan from it (both idempotent by the repayment's id).
  statements    GET /v1/customers/{ref}/statement: the deposit's movements, newest first.
  hosted pages  POST /v1/h5/sessions (scope applications): a session for one onboarded customer
                on the HTML5 journey (gateway/h5.py), in the partner's brand, whose token
                reaches that customer alone (another's is 404) and only applications and loans.
  events        GET /v1/events: the partner's latest events with their delivery to this app's
                webhook (the delivery log).
Every call is audited (the partner, app, route, ids named and outcome), in the process's
audit log (serving/audit.py).

Webhooks (gateway/webhooks.py, gateway/watcher.py): decision, drawdown and repayment events
  when the route succeeds; overdue, freeze and unfreeze when a process's watcher sees a
  partner's loan change bucket or a customer's credit line frozen or unfrozen. Each event is
  recorded once (its id derives from what happened) and POSTed to every app of the partner
  with a webhook URL (`yunkai partner webhook`), signed `Yunkai-Signature: t=..,v1=..`
  (HMAC-SHA256 of "<t>.<body>" with the app's signing secret), retried with backoff until
  delivered or ATTEMPTS_MAX, one process at a time (a lease in the event's record).
"""
