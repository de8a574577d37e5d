"""schemathesis hooks for the gateway's contract test (tools/gateway/tests/contract.rs).

Every refusal the gateway makes is an RFC 9457 problem document: this check holds every answer
of 400 and above to that, on the documented routes and the rest alike (schemathesis's own
checks cover only what the description lists).
"""

import json

import schemathesis


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

