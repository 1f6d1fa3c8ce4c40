#!/usr/bin/env bash
# Interop check: real deliveries from `accommador serve` must verify with the reference
# libraries `standardwebhooks` (PyPI, and npm with Node), as DESIGN 7 promises; a request signed
# by each library must verify with our crate (`accommador verify`); and the Python and Node
# snippets of docs/receivers.md run on those real deliveries (snippets.py, snippets.cjs). Everything runs on 127.0.0.1 in a
# temporary directory; every process started here is stopped on exit.
#
#   bash .ci/interop/run.sh        # exit 0 and a last line `interop: ok`, or non-zero with logs
#
# Needs python3 (with venv), node and npm, curl, and network access to PyPI and npm the first
# time: the libraries go into a venv and a folder under the cargo target dir (reused when
# present), never into the system Python or a global node_modules.
set -euo pipefail
cd "$(dirname "$0")/../.."
here=.ci/interop
target=$(realpath -m "${CARGO_TARGET_DIR:-target}")
venv="$target/interop-venv"
py="$venv/bin/python"

# The settings under test are the ones given below, not whatever the caller's shell exports.
while read -r v; do unset "$v"; done < <(compgen -e | grep '^ACCOMMADOR_' || true)

tmp=$(mktemp -d "${TMPDIR:-/tmp}/accommador-interop.XXXXXX")
server_pid=
receiver_pid=
status=1

cleanup() {
    local rc=$?
    [ "$status" -eq 0 ] || status=$rc
    for pid in $server_pid $receiver_pid; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in $server_pid $receiver_pid; do
        wait "$pid" 2>/dev/null || true
    done
    if [ "$status" -ne 0 ]; then
        echo "---- server log ($tmp/server.log)"
        tail -n 200 "$tmp/server.log" 2>/dev/null || true
        echo "---- receiver stderr"
        tail -n 100 "$tmp/receiver.err" 2>/dev/null || true
        echo "---- receiver requests (JSONL, body_b64 elided)"
        if [ -s "$tmp/received.jsonl" ]; then
            "$py" -c 'import json,sys
for l in open(sys.argv[1]):
    r = json.loads(l); r.pop("body_b64", None); print(json.dumps(r))' "$tmp/received.jsonl" || cat "$tmp/received.jsonl"
        fi
        echo "interop: FAILED"
    fi
    rm -rf "$tmp"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Polls `cmd` every 0.1 s until it succeeds, at most $1 tries; fails early if pid $2 died.
poll() {
    local tries=$1 pid=$2
    shift 2
    for _ in $(seq "$tries"); do
        if "$@"; then return 0; fi
        if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then return 2; fi
        sleep 0.1
    done
    return 1
}

echo "== interop: standardwebhooks (PyPI) in $venv"
if ! "$py" -c 'import standardwebhooks' 2>/dev/null; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check standardwebhooks
fi
lib_version=$("$py" -c 'from importlib.metadata import version; print(version("standardwebhooks"))')
node_dir="$target/interop-node"
echo "== interop: standardwebhooks (npm) in $node_dir"
if [ ! -f "$node_dir/node_modules/standardwebhooks/package.json" ]; then
    mkdir -p "$node_dir"
    npm install --prefix "$node_dir" --no-audit --no-fund --silent standardwebhooks
fi

echo "== interop: cargo build --locked"
cargo build --locked -q
bin="$target/debug/accommador"
[ -x "$bin" ] || { echo "interop: no binary at $bin"; exit 1; }

# The receiver picks its own port (0) and writes it down.
"$py" "$here/receiver.py" --port-file "$tmp/receiver.port" --log "$tmp/received.jsonl" \
    --secrets "$tmp/secrets.json" 2>"$tmp/receiver.err" &
receiver_pid=$!
poll 100 "$receiver_pid" test -s "$tmp/receiver.port" || { echo "interop: receiver did not start"; exit 1; }
receiver_port=$(cat "$tmp/receiver.port")

# The server: a free port, retried if another process took it between the probe and the bind.
db="sqlite://$tmp/interop.db"
for try in 1 2 3; do
    port=$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    api="http://127.0.0.1:$port"
    (cd "$tmp" && exec env ACCOMMADOR_ALLOW_PRIVATE_TARGETS=true RUST_LOG="${RUST_LOG:-info}" \
        "$bin" serve --listen "127.0.0.1:$port" --database "$db") >"$tmp/server.log" 2>&1 &
    server_pid=$!
    rc=0
    poll 150 "$server_pid" curl -fs -o /dev/null --max-time 1 "$api/healthz" || rc=$?
    [ "$rc" -eq 0 ] && break
    if [ "$rc" -eq 2 ] && [ "$try" -lt 3 ] && grep -qi 'address already in use' "$tmp/server.log"; then
        wait "$server_pid" 2>/dev/null || true
        server_pid=
        continue
    fi
    echo "interop: server did not answer /healthz at $api"
    exit 1
done
echo "== interop: server $api, receiver http://127.0.0.1:$receiver_port, standardwebhooks $lib_version"

org=$("$bin" orgs create Interop --json --database "$db")
key=$(printf '%s' "$org" | "$py" -c 'import json,sys; print(json.load(sys.stdin)["api_key"])')

set +e
INTEROP_API="$api" INTEROP_KEY="$key" INTEROP_HOOK_URL="http://127.0.0.1:$receiver_port/hook" \
    INTEROP_SECRETS="$tmp/secrets.json" INTEROP_LOG="$tmp/received.jsonl" INTEROP_WAIT=10 \
    timeout 45 "$py" "$here/check.py"
status=$?
set -e
if [ "$status" -eq 124 ]; then echo "interop: check.py timed out"; fi
if [ "$status" -eq 0 ] && ! kill -0 "$server_pid" 2>/dev/null; then
    echo "interop: the server exited during the check"
    status=1
fi
if [ "$status" -eq 0 ]; then
    echo "== interop: npm standardwebhooks and the docs/receivers.md snippets on those deliveries"
    "$py" "$here/snippets.py" --docs docs/receivers.md --log "$tmp/received.jsonl" \
        --secrets "$tmp/secrets.json" --out "$tmp" || status=1
    NODE_PATH="$node_dir/node_modules" node "$here/snippets.cjs" docs/receivers.md \
        "$tmp/received.jsonl" "$tmp/secrets.json" "$tmp" || status=1
fi
if [ "$status" -eq 0 ]; then
    echo "== interop: requests signed by each library, verified by our crate (accommador verify)"
    for lib in python node; do
        if ! "$bin" verify --secret "$(cat "$tmp/secret")" --headers "$tmp/$lib.headers.json" \
            --body "$tmp/$lib.body"; then
            echo "interop: a request signed by the $lib library did not verify"
            status=1
        fi
        printf ' ' >>"$tmp/$lib.body"
        if "$bin" verify --secret "$(cat "$tmp/secret")" --headers "$tmp/$lib.headers.json" \
            --body "$tmp/$lib.body" 2>/dev/null; then
            echo "interop: a tampered request signed by the $lib library verified"
            status=1
        fi
    done
fi
[ "$status" -eq 0 ] && echo "interop: ok (standardwebhooks $lib_version, npm $(node -p 'require(process.argv[1]).version' "$node_dir/node_modules/standardwebhooks/package.json"))"
exit "$status"
