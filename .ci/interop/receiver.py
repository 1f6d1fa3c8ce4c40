#!/usr/bin/env python3
"""Interop receiver: verifies every webhook POST with the reference Python library
`standardwebhooks` (PyPI) and logs one JSON line per request.

    receiver.py --port-file FILE --log FILE --secrets FILE

- Binds 127.0.0.1 on port 0 and writes the chosen port to --port-file (atomically).
- --secrets is a JSON object {label: "whsec_..."} re-read on every request, so the driver can
  add secrets (e.g. after creating or rotating an endpoint) while the receiver runs. A missing
  file means "no secrets yet": every request is then unverified.
- Each request is verified with `standardwebhooks.Webhook(secret).verify(body, headers)` once
  per known secret (the whole header, as a receiver would), and once per single signature of
  the `webhook-signature` list (which secret signed which entry).
- Answers 204 if at least one known secret verifies, else 401.
"""

import argparse
import base64
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook

LOCK = threading.Lock()


def load_secrets(path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return {}


def verify(secret, body, headers):
    """(ok, error) with the reference library; any exception is a failure."""
    try:
        Webhook(secret).verify(body, headers, json_parse=True)
        return True, None
    except Exception as e:  # WebhookVerificationError, but also malformed headers (ValueError)
        return False, f"{type(e).__name__}: {e}"


def make_handler(args):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the server's pooled client expects
        server_version = "interop-receiver"

        def log_message(self, fmt, *a):
            sys.stderr.write("receiver: " + (fmt % a) + "\n")

        def read_body(self):
            if self.headers.get("transfer-encoding", "").lower() == "chunked":
                out = b""
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return out
                    out += self.rfile.read(size)
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("content-length") or 0))

        def answer(self, status, body=b""):
            self.send_response(status)
            if status != 204:
                self.send_header("content-type", "text/plain")
                self.send_header("content-length", str(len(body)))
            self.end_headers()
            if status != 204:
                self.wfile.write(body)

        def do_GET(self):
            self.answer(200 if self.path == "/ping" else 404, b"ok\n")

        def do_POST(self):
            body = self.read_body()
            headers = {k.lower(): v for k, v in self.headers.items()}
            secrets = load_secrets(args.secrets)
            results, errors = {}, {}
            for label, secret in secrets.items():
                results[label], err = verify(secret, body, headers)
                if err:
                    errors[label] = err
            # Which secrets verify each single entry of the signature list.
            sig_list = headers.get("webhook-signature", "").split(" ")
            per_sig = []
            for sig in sig_list:
                one = dict(headers, **{"webhook-signature": sig})
                per_sig.append(sorted(l for l, s in secrets.items() if verify(s, body, one)[0]))
            try:
                event = json.loads(body)
            except Exception:
                event = {}
            verified = any(results.values())
            rec = {
                "received_at": time.time(),
                "path": self.path,
                "webhook_id": headers.get("webhook-id"),
                "webhook_timestamp": headers.get("webhook-timestamp"),
                "webhook_signature": headers.get("webhook-signature"),
                "signature_count": len([s for s in sig_list if s]),
                "signature_matches": per_sig,
                "content_type": headers.get("content-type"),
                "user_agent": headers.get("user-agent"),
                "type": event.get("type") if isinstance(event, dict) else None,
                "body_id": event.get("id") if isinstance(event, dict) else None,
                "verified": verified,
                "verified_with": results,
                "errors": errors,
                "body_b64": base64.b64encode(body).decode("ascii"),
            }
            with LOCK:
                with open(args.log, "a", encoding="utf-8") as f:
                    f.write(json.dumps(rec) + "\n")
            if verified:
                self.answer(204)
            else:
                self.answer(401, b"signature did not verify\n")

    return Handler


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port-file", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--secrets", required=True)
    args = p.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(args))
    server.daemon_threads = True
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(server.server_address[1]))
    os.replace(tmp, args.port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
