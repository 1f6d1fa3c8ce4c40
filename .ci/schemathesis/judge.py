"""Judges a schemathesis NDJSON report against the reviewed baseline of accepted exceptions.

Schemathesis's own baseline matches a failure by operation, check and status code only, which
would also hide a new, real mismatch with the same status. Here an entry names the operations,
the check, the status and what the server's problem+json said (its `type` and the fields in
`errors`), and carries the reason it was accepted. Every failed check that no entry covers,
and every error schemathesis reports, fails the run; entries that matched nothing are listed
(a fixed finding: remove its entry).

    python judge.py --baseline baseline.json --label sqlite-tenant report.ndjson
"""

import argparse
import base64
import collections
import json
import sys


def problem_of(interaction):
    """The response's status and its problem `type` and error fields, when it has them."""
    response = (interaction or {}).get("response") or {}
    status = response.get("status_code")
    content = response.get("content") or {}
    raw = content.get("$base64")
    body = None
    if raw is not None:
        try:
            body = json.loads(base64.b64decode(raw))
        except ValueError:
            body = None
    if not isinstance(body, dict):
        return status, None, None
    fields = sorted(e.get("field") for e in body.get("errors") or [] if isinstance(e, dict))
    return status, body.get("type"), fields


def explained(entry, interaction, interactions):
    """An entry with `explained_by` covers a failure only when one of its explanations is in the
    same scenario, about the ID the failing request names (its last path segment):
    - `{"request": "POST /v1/users/{id}/erase"}`: that request answered 2xx before it;
    - `{"replayed_creation": true}`: the response that handed out the ID was an idempotent
      replay (`idempotent-replayed: true`), i.e. the saved answer of an earlier creation."""
    reasons = entry.get("explained_by")
    if reasons is None:
        return True
    uri = ((interaction or {}).get("request") or {}).get("uri") or ""
    ident = uri.split("?")[0].rstrip("/").rsplit("/", 1)[-1]
    at = (interaction or {}).get("timestamp", 0)
    for other in interactions.values():
        request = other.get("request") or {}
        response = other.get("response") or {}
        status = response.get("status_code") or 0
        if not 200 <= status < 300 or other.get("timestamp", 0) > at:
            continue
        for reason in reasons:
            wanted = reason.get("request")
            if wanted:
                method, path = wanted.split(" ", 1)
                if request.get("method") == method and request.get("uri", "").split("?")[0].endswith(
                    path.replace("{id}", ident)
                ):
                    return True
            if reason.get("replayed_creation"):
                replayed = (response.get("headers") or {}).get("idempotent-replayed") == ["true"]
                raw = (response.get("content") or {}).get("$base64")
                try:
                    body = json.loads(base64.b64decode(raw)) if raw else None
                except ValueError:
                    body = None
                if replayed and isinstance(body, dict) and body.get("id") == ident:
                    return True
    return False


def covers(entry, operation, check, status, ptype, fields):
    if operation not in entry["operations"] or entry["check"] != check:
        return False
    if entry.get("status") is not None and entry["status"] != status:
        return False
    if entry.get("problem_type") is not None and entry["problem_type"] != ptype:
        return False
    if entry.get("fields") is not None and sorted(entry["fields"]) != (fields or []):
        return False
    return True


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--baseline", required=True)
    parser.add_argument("--label", default="schemathesis")
    parser.add_argument("report")
    args = parser.parse_args()
    entries = json.load(open(args.baseline))["entries"]
    for entry in entries:
        if not entry.get("reason"):
            sys.exit(f"baseline entry without a reason: {entry}")

    used = collections.Counter()
    new = collections.Counter()
    examples = {}
    errors = []
    cases = 0
    for line in open(args.report):
        event = json.loads(line)
        kind, payload = next(iter(event.items()))
        if "Error" in kind:
            errors.append(f"{kind}: {json.dumps(payload)[:600]}")
            continue
        if kind != "ScenarioFinished":
            continue
        recorder = payload.get("recorder") or {}
        interactions = recorder.get("interactions") or {}
        cases += len(interactions)
        for case_id, checks in (recorder.get("checks") or {}).items():
            for check in checks:
                if check.get("status") == "success":
                    continue
                failure = (check.get("failure_info") or {}).get("failure") or {}
                operation = failure.get("operation") or recorder.get("label") or "?"
                status, ptype, fields = problem_of(interactions.get(case_id))
                key = (operation, check["name"], status, ptype, tuple(fields or ()))
                interaction = interactions.get(case_id)
                match = next(
                    (
                        i
                        for i, e in enumerate(entries)
                        if covers(e, operation, check["name"], status, ptype, fields)
                        and explained(e, interaction, interactions)
                    ),
                    None,
                )
                if match is None:
                    new[key] += 1
                    examples.setdefault(key, failure.get("title") or failure.get("type"))
                else:
                    used[match] += 1

    print(f"{args.label}: {cases} requests judged, {sum(used.values())} accepted by the baseline, "
          f"{sum(new.values())} new failures, {len(errors)} errors")
    for i, n in sorted(used.items()):
        print(f"  accepted {n}x: {entries[i]['check']} {entries[i].get('status')} {entries[i].get('fields')}"
              f" ({entries[i]['reason'][:100]})")
    for key, n in new.items():
        operation, check, status, ptype, fields = key
        print(f"  NEW {n}x: {operation} {check}: {examples[key]} (status {status}, type {ptype}, fields {list(fields)})")
    for error in errors:
        print(f"  ERROR {error}")
    return 1 if new or errors else 0


if __name__ == "__main__":
    sys.exit(main())
