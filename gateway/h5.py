"""The hosted HTML5 journey: mobile pages a partner embeds, in its brand, on the same /v1 API.

A partner's backend opens a session for one onboarded customer (POST /v1/h5/sessions, scope
applications): the product, the application data the partner already holds, its brand (name
and colour). The answer is a URL of the page, /h5/journey#session=<token>: the token travels
in the fragment, so it never reaches a server's log or a Referer header. The token is the
app's, narrowed to that customer and to the scopes applications and loans, for SESSION_TTL_S;
the page reads its brand and data from it and calls the same routes any app calls: it
applies (the customer chooses the amount), shows the decision, shows the agreement and signs
it (the customer types their name; the document's SHA-256 is kept with the loan), draws, and
shows the loan. One static page, no framework, no script or font from anywhere else.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

SESSION_TTL_S = 900
# The page loads nothing from anywhere else (its style and script are inline).
CONTENT_SECURITY_POLICY = "default-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
SESSION_SCOPES = ("applications", "loans")
COLOUR = r"^#[0-9a-fA-F]{6}$"


class SessionIn(BaseModel):
    customer_ref: str = Field(pattern=r"^[A-Za-z0-9]{1,16}$")
    product: str = Field(min_length=1, max_length=32)
    fields: dict[str, float] = Field(default_factory=dict, max_length=64, description="the application's data")
    brand_name: str = Field(min_length=1, max_length=40)
    brand_colour: str = Field(default="#1a5fb4", pattern=COLOUR)
    amount_max_fen: int = Field(default=50_000_000, gt=0, le=10**12)


class SessionOut(BaseModel):
    url: str = Field(description="the page for the customer, with the session in its fragment")
    expires_in: int


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Business loan</title>
<style>
:root { --brand: #1a5fb4; }
body { font-family: sans-serif; margin: 0; background: #f6f6f6; color: #222; }
header { background: var(--brand); color: #fff; padding: 1em; font-size: 1.2em; }
main { padding: 1em; max-width: 32em; margin: auto; }
section { background: #fff; border-radius: .5em; padding: 1em; margin-bottom: 1em; display: none; }
section.on { display: block; }
label { display: block; margin: .5em 0 .2em; }
input { width: 100%; box-sizing: border-box; padding: .6em; font-size: 1em; }
button { width: 100%; margin-top: 1em; padding: .8em; font-size: 1em; border: 0; border-radius: .4em;
         background: var(--brand); color: #fff; }
.big { font-size: 1.6em; font-weight: bold; }
.error { color: #b00020; }
pre { white-space: pre-wrap; background: #f0f0f0; padding: .5em; }
</style></head>
<body>
<header id="brand">Business loan</header>
<main>
<p id="error" class="error"></p>
<section id="apply" class="on">
  <h2>Apply</h2>
  <p>Product <b id="product"></b>. Your business data comes from <span class="partner"></span>.</p>
  <label for="amount">Amount (yuan)</label>
  <input id="amount" type="number" min="1" step="1" value="30000">
  <button id="apply-button">Apply</button>
</section>
<section id="decision">
  <h2>Decision</h2>
  <p class="big" id="outcome"></p>
  <p id="offer"></p>
  <button id="to-sign">Read the agreement</button>
</section>
<section id="sign">
  <h2>Loan agreement</h2>
  <pre id="agreement"></pre>
  <label for="signer">Type your full name to sign</label>
  <input id="signer" autocomplete="name">
  <label for="draw-amount">Draw now (yuan)</label>
  <input id="draw-amount" type="number" min="1" step="1">
  <button id="sign-button">Sign and draw</button>
</section>
<section id="done">
  <h2>Your loan</h2>
  <p class="big" id="loan-status"></p>
  <p id="loan-detail"></p>
</section>
</main>
<script>
"use strict";
const token = new URLSearchParams(location.hash.slice(1)).get("session") || "";
const claims = token ? JSON.parse(atob(token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/"))) : {};
const page = claims.page || {};
const customer = claims.cus || "";
const $ = (id) => document.getElementById(id);
const yuan = (fen) => (fen / 100).toLocaleString("en", {minimumFractionDigits: 2});
const ref = () => crypto.getRandomValues(new Uint32Array(2)).join("").slice(0, 12);
let decision = null, loanRef = ref(), applicationRef = "h5" + ref();
const keys = {};
function show(id) { for (const s of document.querySelectorAll("section")) s.classList.toggle("on", s.id === id); }
async function call(method, path, body, keyName) {
  const headers = {"Authorization": "Bearer " + token, "Content-Type": "application/json"};
  if (keyName) headers["Idempotency-Key"] = keys[keyName] = keys[keyName] || "h5-" + keyName + "-" + ref();
  const reply = await fetch(path, {method, headers, body: body ? JSON.stringify(body) : undefined});
  const answer = await reply.json();
  if (!reply.ok) throw new Error(answer.message || reply.statusText);
  return answer;
}
async function step(work) {
  $("error").textContent = "";
  try { await work(); } catch (e) { $("error").textContent = e.message; }
}
if (page.brand) {
  document.documentElement.style.setProperty("--brand", page.brand.colour);
  $("brand").textContent = page.brand.name + " · business loan";
  for (const e of document.querySelectorAll(".partner")) e.textContent = page.brand.name;
}
$("product").textContent = page.product || "";
if (!token) $("error").textContent = "This page needs a session: open it from your partner's app.";
$("apply-button").onclick = () => step(async () => {
  const amount = Math.round(Number($("amount").value) * 100);
  decision = await call("POST", "/v1/applications", {application_ref: applicationRef, customer_ref: customer,
    product: page.product, amount_requested_fen: amount, fields: page.fields || {}, documents: []}, "apply");
  const approved = decision.outcome === "APPROVE";
  $("outcome").textContent = approved ? "Approved" : (decision.outcome === "REFER" ? "Under review" : "Declined");
  $("offer").textContent = approved ? "Credit line " + yuan(decision.limit_fen) + " yuan at " +
    (decision.price_bps / 100).toFixed(2) + "% a year." : "Reasons: " + decision.reason_codes.join(", ");
  $("to-sign").style.display = approved ? "" : "none";
  $("draw-amount").value = Math.floor(decision.limit_fen / 100);
  show("decision");
});
$("to-sign").onclick = () => {
  $("agreement").textContent = "Loan agreement\\n\\nBorrower: customer " + customer + " of " +
    (page.brand ? page.brand.name : "") + "\\nProduct: " + page.product + "\\nCredit line: " +
    yuan(decision.limit_fen) + " yuan\\nAnnual rate: " + (decision.price_bps / 100).toFixed(2) +
    "%\\nApplication: " + decision.application_ref + "\\n\\nThe borrower repays each instalment when due.";
  show("sign");
};
$("sign-button").onclick = () => step(async () => {
  const signer = $("signer").value.trim();
  if (!signer) throw new Error("Type your name to sign.");
  const documentText = $("agreement").textContent + "\\n\\nSigned: " + signer;
  const bytes = new TextEncoder().encode(documentText);
  const base64 = btoa(String.fromCharCode(...bytes));
  await call("PUT", "/v1/loans/" + loanRef + "/agreement", {customer_ref: customer, document_base64: base64});
  const loan = await call("POST", "/v1/loans", {loan_ref: loanRef, customer_ref: customer, product: page.product,
    amount_fen: Math.round(Number($("draw-amount").value) * 100), date: new Date().toISOString().slice(0, 10)},
    "draw");
  const first = loan.schedule[0];
  $("loan-status").textContent = yuan(loan.principal_fen) + " yuan drawn";
  $("loan-detail").textContent = "Loan " + loan.loan_ref + ": " + loan.term_months + " months at " +
    (loan.annual_rate_bps / 100).toFixed(2) + "%. First instalment " +
    yuan(first.principal_fen + first.interest_fen + first.fees_fen) + " yuan, due " + first.due +
    ". Agreement " + loan.agreement_sha256.slice(0, 12) + "…";
  show("done");
});
</script>
</body></html>
"""
