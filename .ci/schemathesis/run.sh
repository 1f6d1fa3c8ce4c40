#!/usr/bin/env bash
# Schemathesis (PyPI) against the served /openapi.json: every check and every phase (examples,
# coverage, fuzzing, stateful), as a new user of the API would try it, with an organization's
# API key and the operator's admin token (each security scheme gets its own, see
# schemathesis.toml). Failures are judged by judge.py against baseline.json, the reviewed list
# of accepted exceptions (one reason each); anything else fails the run.
#
#   bash .ci/schemathesis/run.sh            # SQLite, then PostgreSQL `serve --no-worker`
#   SCHEMATHESIS_BACKENDS=sqlite bash .ci/schemathesis/run.sh
#
# Each backend is fuzzed in two runs on one server: first the tenant's routes, then the ones
# that can lock the fuzzer out (operator routes, which may delete its organization, and API-key
# revocation, which may revoke its key). Time budget (seconds, whole run <= 5 min by default):
# SCHEMATHESIS_TENANT_TIME (default 110) and SCHEMATHESIS_OPERATOR_TIME (default 25) per
# backend. PostgreSQL needs ACCOMMADOR_TEST_POSTGRES_URL (an admin URL) or is skipped with a
# note when the variable is unset. SCHEMATHESIS_SEED fixes hypothesis's seed (.ci/run sets one,
# so that CI judges the same generated cases each time instead of failing on whatever a new
# random draw finds); unset, each run draws its own seed and prints it (the full mode: run it a
# few times after changing the document or a route). Needs python3 (venv), curl, PyPI the first time (the venv
# is kept under the cargo target dir); .schemathesis/ and .hypothesis/ stay in that dir too.
set -euo pipefail
cd "$(dirname "$0")/../.."
here=$(pwd)/.ci/schemathesis
target=$(realpath -m "${CARGO_TARGET_DIR:-target}")
venv="$target/schemathesis-venv"
runs="$target/schemathesis-runs"
version=4.32.5
tenant_time=${SCHEMATHESIS_TENANT_TIME:-110}
operator_time=${SCHEMATHESIS_OPERATOR_TIME:-25}
backends=${SCHEMATHESIS_BACKENDS:-sqlite postgres}
pg_admin=${ACCOMMADOR_TEST_POSTGRES_URL:-}
seed=${SCHEMATHESIS_SEED:-$((RANDOM * 32768 + RANDOM))}

# The settings under test are the ones given below, not whatever the caller's shell exports.
while read -r v; do unset "$v"; done < <(compgen -e | grep '^ACCOMMADOR_' || true)

tmp=$(mktemp -d "${TMPDIR:-/tmp}/accommador-schemathesis.XXXXXX")
server_pid=
pg_db=
status=0

stop_server() {
    if [ -n "$server_pid" ]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
        server_pid=
    fi
    if [ -n "$pg_db" ]; then
        psql "$pg_admin" -qc "DROP DATABASE IF EXISTS $pg_db WITH (FORCE)" >/dev/null 2>&1 || true
        pg_db=
    fi
}
cleanup() {
    local rc=$?
    [ "$status" -ne 0 ] || status=$rc
    stop_server
    rm -rf "$tmp"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== schemathesis $version in $venv"
if [ "$("$venv/bin/schemathesis" --version 2>/dev/null || true)" != "schemathesis, version $version" ]; then
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$version"
fi

echo "== schemathesis: cargo build --locked"
cargo build --locked -q -p accommador --bin accommador
bin="$target/debug/accommador"

# Starts `serve` on port 0 against $1 (extra flags after it) and sets $api from its log line.
start_server() {
    local db=$1
    shift
    admin_token="fuzz-admin-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
    (cd "$tmp" && exec env ACCOMMADOR_ADMIN_TOKEN="$admin_token" RUST_LOG=warn,accommador=info \
        "$bin" serve --listen 127.0.0.1:0 --database "$db" "$@") >"$tmp/server.log" 2>&1 &
    server_pid=$!
    api=
    for _ in $(seq 600); do
        api=$(grep -o 'accommador is listening address=[0-9.:]*' "$tmp/server.log" | head -n1 | sed 's/.*address=//' || true)
        if [ -n "$api" ] && curl -fs -o /dev/null --max-time 1 "http://$api/healthz"; then break; fi
        kill -0 "$server_pid" 2>/dev/null || { cat "$tmp/server.log"; echo "schemathesis: the server exited"; return 1; }
        api=
        sleep 0.1
    done
    [ -n "$api" ] || { cat "$tmp/server.log"; echo "schemathesis: the server did not answer"; return 1; }
    api="http://$api"
}

# One schemathesis run: $1 label, $2 seconds, the rest filters. Its NDJSON report is judged.
fuzz() {
    local label=$1 seconds=$2
    shift 2
    # Kept after the run (target/schemathesis-runs/<label>/: output.txt, report.ndjson).
    local out="$runs/$label"
    rm -rf "$out"
    mkdir -p "$out"
    echo "== schemathesis: $label (${seconds} s, SCHEMATHESIS_SEED=$seed) against $api"
    set +e
    # Its example database and caches go under $out, never into the checkout.
    (cd "$out" && ACCOMMADOR_FUZZ_API_KEY="$key" ACCOMMADOR_FUZZ_ADMIN_TOKEN="$admin_token" \
        timeout $((seconds + 60)) "$venv/bin/schemathesis" --config-file "$here/schemathesis.toml" \
        run "$api/openapi.json" --checks all --phases examples,coverage,fuzzing,stateful \
        --max-time "$seconds" --workers 1 --no-color --generation-database none --seed "$seed" \
        --report ndjson --report-ndjson-path "$out/report.ndjson" "$@") >"$out/output.txt" 2>&1
    local rc=$?
    set -e
    grep -E '^(Test cases|API Operations|  (Selected|Tested)|Failures|  ❌|  ✅|=+ .* in [0-9.]+s)' "$out/output.txt" || true
    if [ "$rc" -gt 1 ]; then
        tail -n 80 "$out/output.txt"
        echo "schemathesis: $label: schemathesis itself exited $rc"
        return 1
    fi
    if ! "$venv/bin/python" "$here/judge.py" --baseline "$here/baseline.json" --label "$label" \
        "$out/report.ndjson"; then
        sed -n '/= FAILURES =/,/= SUMMARY =/p' "$out/output.txt" | head -n 200
        return 1
    fi
    kill -0 "$server_pid" 2>/dev/null || { tail -n 50 "$tmp/server.log"; echo "schemathesis: the server died"; return 1; }
    if grep -q 'panicked' "$tmp/server.log"; then
        grep -B2 -A10 'panicked' "$tmp/server.log" | head -n 60
        echo "schemathesis: a handler panicked"
        return 1
    fi
}

# Operator routes may delete the fuzzer's organization; revoking keys may revoke its key. The
# second run also takes the other key routes, so that revocation has keys to revoke.
lockout_ops='^([A-Z]+ /v1/organizations.*|DELETE /v1/api-keys/\{id\})$'
operator_ops='^([A-Z]+ /v1/organizations.*|[A-Z]+ /v1/api-keys.*)$'
one_backend() {
    local backend=$1 db
    shift
    case $backend in
        sqlite) db="sqlite://$tmp/fuzz.db" ;;
        postgres)
            pg_db="acc_fuzz_$(date +%s)_$$"
            psql "$pg_admin" -qc "CREATE DATABASE $pg_db" >/dev/null
            db="${pg_admin%/*}/$pg_db"
            ;;
    esac
    start_server "$db" "$@"
    key=$("$bin" orgs create Fuzz --json --database "$db" | "$venv/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["api_key"])')
    fuzz "$backend-tenant" "$tenant_time" --exclude-name-regex "$lockout_ops" || status=1
    fuzz "$backend-operator" "$operator_time" --include-name-regex "$operator_ops" || status=1
    stop_server
}

for backend in $backends; do
    case $backend in
        sqlite) one_backend sqlite ;;
        postgres)
            if [ -z "$pg_admin" ]; then
                echo "== schemathesis: PostgreSQL skipped (ACCOMMADOR_TEST_POSTGRES_URL is unset)"
            else
                one_backend postgres --no-worker
            fi
            ;;
        *) echo "schemathesis: unknown backend $backend"; status=1 ;;
    esac
done
[ "$status" -eq 0 ] && echo "schemathesis: ok ($backends)"
exit "$status"
