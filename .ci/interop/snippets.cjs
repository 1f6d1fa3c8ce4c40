// Real deliveries verified by the npm `standardwebhooks` package (each agreeing with the PyPI
// library's verdict per secret), the Node snippet of docs/receivers.md run on them, and a request
// signed by the npm library for our own `accommador verify` to check.
//
//   NODE_PATH=…/node_modules node snippets.cjs DOCS LOG SECRETS OUTDIR
"use strict";
const fs = require("fs");
const { Webhook } = require("standardwebhooks");

const [docs, log, secretsPath, out] = process.argv.slice(2);
const fail = (msg) => {
  console.error(`snippets: ${msg}`);
  process.exit(1);
};

function snippet(lang) {
  const text = fs.readFileSync(docs, "utf8");
  const marker = `<!-- interop: ${lang} -->`;
  const at = text.indexOf(marker);
  if (at < 0) fail(`no \`${marker}\` in ${docs}`);
  const after = text.slice(at + marker.length);
  const start = after.indexOf("\n", after.indexOf("```")) + 1;
  return after.slice(start, after.indexOf("```", start));
}

const secrets = JSON.parse(fs.readFileSync(secretsPath, "utf8"));
const records = fs.readFileSync(log, "utf8").trim().split("\n").map((l) => JSON.parse(l));

// 1. Every request the receiver logged: npm's verdict per secret equals PyPI's.
let verified = 0;
const got = [];
for (const rec of records) {
  const headers = {
    "webhook-id": rec.webhook_id,
    "webhook-timestamp": rec.webhook_timestamp,
    "webhook-signature": rec.webhook_signature,
  };
  const body = Buffer.from(rec.body_b64, "base64");
  const signers = [];
  for (const [label, secret] of Object.entries(secrets)) {
    let ok = true;
    try {
      new Webhook(secret).verify(body, headers);
    } catch (e) {
      ok = false;
    }
    const py = Boolean(rec.verified_with && rec.verified_with[label]);
    if (ok !== py) fail(`${rec.webhook_id} with secret ${label}: npm says ${ok}, PyPI says ${py}`);
    if (ok) signers.push(secret);
  }
  if (signers.length > 0) {
    verified += 1;
    got.push({ signers, headers, body, event: JSON.parse(body) });
  }
}
if (verified < 3) fail(`only ${verified} deliveries verified with npm standardwebhooks`);

// 2. The snippet of docs/receivers.md on them.
const handle = new Function("require", `${snippet("node")}\nreturn handle;`)(require);
const store = { seen: new Set(), users: new Map() };
const expected = new Map();
for (const { event } of got) {
  if (!event.type.startsWith("user.")) continue;
  const u = event.data.user;
  expected.set(u.id, Math.max(expected.get(u.id) || 0, u.version));
}
for (const { signers, headers, body, event } of got) {
  for (const secret of signers) {
    const status = handle(secret, headers, body, store);
    if (status !== 204) fail(`node answered ${status} to ${event.id} (${event.type})`);
  }
}
for (const [id, version] of expected) {
  const stored = store.users.get(id);
  if (!stored || stored.version !== version) {
    fail(`node left ${id} at ${stored && stored.version}, expected version ${version}`);
  }
}
const first = got.find((g) => g.event.type.startsWith("user."));
const before = JSON.stringify([...store.users]);
if (handle(first.signers[0], first.headers, first.body, store) !== 204) fail("node refused a redelivery");
if (JSON.stringify([...store.users]) !== before) fail("node applied a redelivery");
const tampered = Buffer.from(first.body.toString().replace('"version"', '"version" '));
if (handle(first.signers[0], first.headers, tampered, store) !== 401) fail("node accepted a tampered body");

// An old version arriving late (a new event ID, properly signed) is dropped.
const secret = first.signers[0];
const staleEvent = { ...first.event, id: "evt_stale_node" };
const staleBody = JSON.stringify(staleEvent);
const staleAt = new Date();
const staleHeaders = {
  "webhook-id": staleEvent.id,
  "webhook-timestamp": String(Math.floor(staleAt.getTime() / 1000)),
  "webhook-signature": new Webhook(secret).sign(staleEvent.id, staleAt, staleBody),
};
const uid = first.event.data.user.id;
if (first.event.data.user.version >= expected.get(uid)) fail("no stale event to send");
if (handle(secret, staleHeaders, staleBody, store) !== 204) fail("node refused a stale event");
if (store.users.get(uid).version !== expected.get(uid)) fail("node went back to an older version");

// 3. A request signed by the npm library, for our crate.
const msgId = "msg_node_interop";
const now = new Date();
const payload = JSON.stringify({ id: msgId, type: "webhook.test", data: { endpoint_id: "ep_x" } });
const signature = new Webhook(secret).sign(msgId, now, payload);
fs.writeFileSync(
  `${out}/node.headers.json`,
  JSON.stringify({
    "webhook-id": msgId,
    "webhook-timestamp": String(Math.floor(now.getTime() / 1000)),
    "webhook-signature": signature,
  }),
);
fs.writeFileSync(`${out}/node.body`, payload);
console.log(`snippets: npm standardwebhooks verified ${verified} deliveries; node snippet ok; signed a request`);
