"""Runs the Python snippet of docs/receivers.md on real deliveries, and signs a request with the
PyPI `standardwebhooks` library for our own `accommador verify` to check.

    snippets.py --docs docs/receivers.md --log received.jsonl --secrets secrets.json --out DIR

The snippet's `handle` must answer 204 to every real delivery (each secret that signed it), 204
again to a redelivery without applying it twice, 401 to a tampered body; and leave each user at
the highest version delivered. Writes DIR/python.headers.json and DIR/python.body.
"""

import argparse
import base64
import datetime
import json
import sys
import types


def snippet(docs, lang):
    text = open(docs, encoding="utf-8").read()
    marker = f"<!-- interop: {lang} -->"
    if marker not in text:
        sys.exit(f"snippets: no `{marker}` in {docs}")
    after = text.split(marker, 1)[1]
    start = after.index("```") + 3
    start = after.index("\n", start) + 1
    return after[start : after.index("```", start)]


def deliveries(log, secrets):
    """(secret, headers, body, event) of every delivery the receiver verified, in order."""
    out = []
    for line in open(log, encoding="utf-8"):
        rec = json.loads(line)
        if not rec.get("verified"):
            continue
        labels = [l for l, ok in rec["verified_with"].items() if ok]
        headers = {
            "webhook-id": rec["webhook_id"],
            "webhook-timestamp": rec["webhook_timestamp"],
            "webhook-signature": rec["webhook_signature"],
            "content-type": rec["content_type"],
        }
        body = base64.b64decode(rec["body_b64"])
        out.append(([secrets[l] for l in labels], headers, body, json.loads(body)))
    return out


def main():
    p = argparse.ArgumentParser()
    for a in ("--docs", "--log", "--secrets", "--out"):
        p.add_argument(a, required=True)
    args = p.parse_args()
    secrets = json.load(open(args.secrets, encoding="utf-8"))
    ns = {}
    exec(compile(snippet(args.docs, "python"), "receivers.md (python)", "exec"), ns)
    handle = ns["handle"]

    got = deliveries(args.log, secrets)
    users = [d for d in got if d[3]["type"].startswith("user.")]
    if len(users) < 3:
        sys.exit(f"snippets: only {len(users)} verified user deliveries to run the snippet on")
    expected = {}
    for _, _, _, e in users:
        u = e["data"]["user"]
        expected[u["id"]] = max(expected.get(u["id"], 0), u["version"])

    store = types.SimpleNamespace(seen=set(), users={})
    for signers, headers, body, event in got:
        for secret in signers:
            status = handle(secret, headers, body, store)
            if status != 204:
                sys.exit(f"snippets: python answered {status} to {event['id']} ({event['type']})")
    applied = {k: v["version"] for k, v in store.users.items()}
    if applied != expected:
        sys.exit(f"snippets: python applied {applied}, expected the highest versions {expected}")

    # A redelivery changes nothing; a tampered body is refused.
    secret, headers, body, event = users[0][0][0], users[0][1], users[0][2], users[0][3]
    before = dict(store.users)
    if handle(secret, headers, body, store) != 204 or store.users != before:
        sys.exit("snippets: python applied a redelivery")
    tampered = body.replace(b'"version"', b'"version" ', 1)
    if handle(secret, headers, tampered, store) != 401:
        sys.exit("snippets: python accepted a tampered body")
    from standardwebhooks.webhooks import Webhook

    # An old version arriving late (a new event ID, properly signed) is dropped.
    stale = dict(event, id="evt_stale_python")
    stale_body = json.dumps(stale)
    now = datetime.datetime.now(tz=datetime.timezone.utc)
    stale_headers = {
        "webhook-id": stale["id"],
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(stale["id"], now, stale_body),
    }
    uid = event["data"]["user"]["id"]
    if event["data"]["user"]["version"] >= expected[uid]:
        sys.exit("snippets: the first user event is already the newest; no stale one to send")
    if handle(secret, stale_headers, stale_body.encode(), store) != 204:
        sys.exit("snippets: python refused a stale event")
    if store.users[uid]["version"] != expected[uid]:
        sys.exit("snippets: python went back to an older version of a user")

    # A request signed by the library, for our crate to verify.
    msg_id = "msg_python_interop"
    payload = json.dumps({"id": msg_id, "type": "webhook.test", "data": {"endpoint_id": "ep_x"}})

    signature = Webhook(secret).sign(msg_id, now, payload)
    json.dump(
        {
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": signature,
        },
        open(f"{args.out}/python.headers.json", "w", encoding="utf-8"),
    )
    open(f"{args.out}/python.body", "w", encoding="utf-8").write(payload)
    open(f"{args.out}/secret", "w", encoding="utf-8").write(secret)
    print(
        f"snippets: python snippet ok on {len(got)} deliveries ({len(expected)} users); "
        "signed a request"
    )


if __name__ == "__main__":
    main()
