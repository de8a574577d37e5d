"""schemathesis hooks for the gateway's contract test (tools/gateway/tests/contract.rs).

Every refusal the gateway makes is an RFC 9457 problem document: this check holds every answer
of 400 and above to that, on the documented routes and the rest alike (schemathesis's own
checks cover only what the description lists). GitHub deliveries generated as valid are signed
with the test's webhook secret (CHOREO_FUZZ_GITHUB_SECRET), so they reach the gateway's reading.
"""

import hashlib
import hmac
import json
import os

import schemathesis
from schemathesis import GenerationMode


@schemathesis.check
def refusals_are_problem_documents(ctx, response, case):
    if response.status_code < 400:
        return None
    content_type = (response.headers.get("content-type") or [""])[0]
    if content_type.split(";")[0].strip() != "application/problem+json":
        raise AssertionError(
            f"{response.status_code} answered as {content_type!r}, not application/problem+json"
        )
    body = json.loads(response.content)
    for field in ("type", "title", "status", "detail"):
        if field not in body:
            raise AssertionError(f"the problem document has no {field}: {body}")
    if body["status"] != response.status_code:
        raise AssertionError(f"status {body['status']} in a {response.status_code} answer")
    return None



@schemathesis.hook
def before_call(ctx, case, kwargs):
    """Signs the GitHub deliveries generated as valid, as GitHub would, so the fuzzing reaches
    past the signature check; the ones generated as invalid stay unsigned, refused 401."""
    secret = os.environ.get("CHOREO_FUZZ_GITHUB_SECRET")
    if not secret or case.path != "/v1/webhooks/github" or not case.headers:
        return
    meta = getattr(case, "_meta", None)
    if meta is None or meta.generation.mode != GenerationMode.POSITIVE:
        return
    name = next((h for h in case.headers if h.lower() == "x-hub-signature-256"), None)
    if name is None or not isinstance(case.body, (dict, list)):
        return
    # The bytes requests sends for `json=`.
    body = json.dumps(case.body, allow_nan=False).encode()
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    case.headers[name] = f"sha256={digest}"
