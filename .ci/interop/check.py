#!/usr/bin/env python3
"""Interop driver: makes the server emit webhooks to the receiver (receiver.py) and checks that
the reference library `standardwebhooks` verified each one. run.sh starts the processes and
passes everything through the environment:

    INTEROP_API       http://127.0.0.1:PORT of `accommador serve`
    INTEROP_KEY       the organization's API key
    INTEROP_HOOK_URL  http://127.0.0.1:PORT/hook of the receiver
    INTEROP_SECRETS   the receiver's secrets file (written here, atomically)
    INTEROP_LOG       the receiver's JSONL log
    INTEROP_WAIT      seconds to wait for each batch of deliveries (default 15)

Prints `interop: ...` lines; exits 1 if any requirement failed.
"""

import base64
import json
import os
import sys
import time
import urllib.error
import urllib.request

API = os.environ["INTEROP_API"]
KEY = os.environ["INTEROP_KEY"]
HOOK_URL = os.environ["INTEROP_HOOK_URL"]
SECRETS = os.environ["INTEROP_SECRETS"]
LOG = os.environ["INTEROP_LOG"]
WAIT = float(os.environ.get("INTEROP_WAIT", "15"))

failures = []


def say(msg):
    print(f"interop: {msg}", flush=True)


def fail(msg):
    failures.append(msg)
    print(f"interop: FAIL {msg}", flush=True)


def die(msg):
    fail(msg)
    sys.exit(1)


def call(method, path, body=None, expect=(200,), headers=None, raw=False):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(API + path, data=data, method=method)
    req.add_header("authorization", f"Bearer {KEY}")
    if data is not None:
        req.add_header("content-type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            status, payload = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, payload = e.code, e.read()
    except (urllib.error.URLError, OSError) as e:
        die(f"{method} {path}: {e}")
    if status not in expect:
        die(f"{method} {path} answered {status}, expected {expect}: {payload[:500]!r}")
    if raw:
        return payload
    return json.loads(payload) if payload else None


def write_secrets(secrets):
    tmp = SECRETS + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(secrets, f)
    os.replace(tmp, SECRETS)


def read_log(all_paths=False):
    try:
        with open(LOG, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # a line being written right now; the next poll sees it whole
    return out if all_paths else [r for r in out if r.get("path") == "/hook"]


def wait_for(ids, what):
    """Polls the receiver log until every webhook-id in `ids` arrived (bounded by WAIT)."""
    deadline = time.monotonic() + WAIT
    while True:
        got = {r["webhook_id"] for r in read_log()}
        missing = [i for i in ids if i not in got]
        if not missing:
            return
        if time.monotonic() > deadline:
            die(f"{what}: no delivery within {WAIT:.0f}s for {missing}")
        time.sleep(0.05)


def first_record(event_id):
    return next(r for r in read_log() if r["webhook_id"] == event_id)


def check_request(rec, expected_type, label):
    """Checks one received request against DESIGN 7; records failures."""
    eid = rec["webhook_id"]
    if rec["type"] != expected_type:
        fail(f"{label} {eid}: body type {rec['type']!r}, expected {expected_type!r}")
    if rec["body_id"] != eid:
        fail(f"{label}: webhook-id {eid} != body id {rec['body_id']}")
    if rec["content_type"] != "application/json":
        fail(f"{label} {eid}: content-type {rec['content_type']!r}")
    if not (rec["user_agent"] or "").startswith("Accommador-Webhooks/"):
        fail(f"{label} {eid}: user-agent {rec['user_agent']!r}")
    ts = rec["webhook_timestamp"] or ""
    if not ts.isdigit() or abs(int(ts) - rec["received_at"]) > 60:
        fail(f"{label} {eid}: webhook-timestamp {ts!r} is not the attempt's unix seconds")
    if not rec["verified"]:
        fail(f"{label} {eid}: standardwebhooks rejected it: {rec['errors']}")


def negative_control(rec):
    """The receiver must reject a tampered body with valid headers (it is not just saying yes)."""
    body = base64.b64decode(rec["body_b64"]).replace(b"ada@", b"eve@")
    url = HOOK_URL.rsplit("/", 1)[0] + "/negative-control"
    req = urllib.request.Request(url, data=body, method="POST")
    req.add_header("content-type", "application/json")
    req.add_header("webhook-id", rec["webhook_id"])
    req.add_header("webhook-timestamp", rec["webhook_timestamp"])
    req.add_header("webhook-signature", rec["webhook_signature"])
    try:
        urllib.request.urlopen(req, timeout=10).read()
        return fail("negative control: the receiver accepted a tampered body")
    except urllib.error.HTTPError as e:
        if e.code != 401:
            return fail(f"negative control: the receiver answered {e.code}, expected 401")
    neg = [r for r in read_log(all_paths=True) if r["path"] == "/negative-control"]
    if not neg or neg[-1]["verified"] or neg[-1]["verified_with"].get("old") is not False:
        return fail("negative control: the tampered request was not logged as unverified")
    say(f"negative control: tampered body rejected ({neg[-1]['errors'].get('old')})")


def main():
    write_secrets({})

    # The endpoint and its secret; the receiver learns the secret through its secrets file.
    ep = call("POST", "/v1/endpoints", {"url": HOOK_URL, "description": "interop"}, expect=(201,))
    ep_id, old_secret = ep["id"], ep["secret"]
    if not old_secret.startswith("whsec_"):
        die(f"endpoint secret {old_secret!r} is not whsec_…")
    write_secrets({"old": old_secret})
    say(f"endpoint {ep_id} -> {HOOK_URL}")

    # A user's whole life, and a test event.
    user = call("POST", "/v1/users",
                {"email": "ada@interop.example", "name": "Ada", "attributes": {"plan": "free"}},
                expect=(201,), headers={"idempotency-key": "interop-1"})
    uid = user["id"]
    call("PATCH", f"/v1/users/{uid}", {"attributes": {"plan": "pro"}, "name": "Ada L."})
    call("DELETE", f"/v1/users/{uid}", expect=(204,))
    test = call("POST", f"/v1/endpoints/{ep_id}/test", expect=(202,))
    test_id = test.get("event_id") if isinstance(test, dict) else None
    if not test_id:
        die(f"POST /v1/endpoints/{{id}}/test answered {test!r}: no event_id")

    events = call("GET", "/v1/events?limit=500")["data"]
    mine = [e for e in events if e["data"].get("user", {}).get("id") == uid]
    types = [e["type"] for e in mine]
    if types != ["user.created", "user.updated", "user.deleted"]:
        die(f"GET /v1/events for {uid}: types {types}, expected created, updated, deleted")
    expected = [(e["id"], e["type"]) for e in mine] + [(test_id, "webhook.test")]
    if any(e["id"] == test_id for e in events):
        fail(f"webhook.test event {test_id} is listed in /v1/events (DESIGN 6: it is not)")

    # Wait for them before rotating, so each was signed with the first secret only.
    wait_for([i for i, _ in expected], "before rotation")
    for eid, etype in expected:
        rec = first_record(eid)
        check_request(rec, etype, "pre-rotation")
        if rec["signature_count"] != 1:
            fail(f"pre-rotation {eid}: {rec['signature_count']} signatures, expected 1")
        if not rec["verified_with"].get("old"):
            fail(f"pre-rotation {eid}: does not verify with the endpoint secret")
        say(f"{etype:13} {eid} verified={rec['verified']}")

    # The payload bytes are fixed at commit: the body received == GET /v1/events/{id}.
    for eid, etype in expected[:3]:
        stored = call("GET", f"/v1/events/{eid}", raw=True)
        received = base64.b64decode(first_record(eid)["body_b64"])
        if stored != received:
            fail(f"{etype} {eid}: GET /v1/events/{{id}} bytes differ from the webhook body\n"
                 f"  stored:   {stored!r}\n  received: {received!r}")
    say("webhook bodies == GET /v1/events/{id} bytes (user.created, user.updated, user.deleted)")

    negative_control(first_record(expected[0][0]))

    # Rotate, then one more user: signed with both secrets during the overlap.
    rot = call("POST", f"/v1/endpoints/{ep_id}/secret/rotate", expect=(200, 201))
    new_secret = (rot or {}).get("secret", "")
    if new_secret == old_secret or not new_secret.startswith("whsec_"):
        die(f"rotate returned {rot!r}")
    write_secrets({"old": old_secret, "new": new_secret})
    user2 = call("POST", "/v1/users", {"email": "grace@interop.example", "name": "Grace"},
                 expect=(201,))
    ev2 = [e for e in call("GET", "/v1/events?limit=500")["data"]
           if e["data"].get("user", {}).get("id") == user2["id"]]
    if [e["type"] for e in ev2] != ["user.created"]:
        die(f"GET /v1/events for {user2['id']}: {[e['type'] for e in ev2]}")
    eid2 = ev2[0]["id"]
    wait_for([eid2], "after rotation")
    rec = first_record(eid2)
    check_request(rec, "user.created", "post-rotation")
    vw = rec["verified_with"]
    if not (vw.get("old") and vw.get("new")):
        fail(f"post-rotation {eid2}: verified with old={vw.get('old')} new={vw.get('new')}, "
             f"both required ({rec['errors']})")
    matches = sorted(tuple(m) for m in rec["signature_matches"])
    if rec["signature_count"] != 2 or matches != [("new",), ("old",)]:
        fail(f"post-rotation {eid2}: {rec['signature_count']} signatures, verified by "
             f"{rec['signature_matches']}; expected one by the new and one by the old secret")
    stored = call("GET", f"/v1/events/{eid2}", raw=True)
    if stored != base64.b64decode(rec["body_b64"]):
        fail(f"post-rotation {eid2}: GET /v1/events/{{id}} bytes differ from the webhook body")
    say(f"{'user.created':13} {eid2} verified={rec['verified']} (after rotation: "
        f"old={vw.get('old')} new={vw.get('new')}, {rec['signature_count']} signatures)")

    # Every request the receiver saw verified (duplicates are allowed: at-least-once).
    want = {i for i, _ in expected} | {eid2}
    for r in read_log():
        if not r["verified"]:
            fail(f"request {r['webhook_id']} ({r['type']}) did not verify: {r['errors']}")
        if r["webhook_id"] not in want:
            fail(f"unexpected delivery {r['webhook_id']} ({r['type']})")

    # The server recorded the receiver's 204s as successes.
    deadline = time.monotonic() + WAIT
    while True:
        dl = call("GET", f"/v1/deliveries?endpoint_id={ep_id}&limit=500")["data"]
        by_event = {d["event_id"]: d for d in dl}
        pending = [i for i in want if by_event.get(i, {}).get("status") != "succeeded"]
        if not pending:
            say(f"GET /v1/deliveries: all {len(want)} succeeded")
            break
        if time.monotonic() > deadline:
            fail(f"deliveries not succeeded after {WAIT:.0f}s: "
                 f"{[(i, by_event.get(i, {}).get('status')) for i in pending]}")
            break
        time.sleep(0.05)

    n = len(read_log())
    if failures:
        say(f"{len(failures)} failure(s) over {n} received request(s)")
        sys.exit(1)
    say(f"all {len(want)} deliveries verified with standardwebhooks ({n} requests received)")


if __name__ == "__main__":
    main()
