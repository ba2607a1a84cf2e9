# Shared by scripts/quickstart and scripts/bench: moto on 127.0.0.1 and a
# rotation setup in it. Source it from the repository root.

# Installs what a fresh machine lacks: the wasm32-wasip2 target and moto in .venv.
install_prerequisites() {
    rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
    if [ ! -x .venv/bin/moto_server ]; then
        python3 -m venv .venv
        .venv/bin/pip install --quiet --disable-pip-version-check 'moto[server]>=5,<6'
    fi
}

# Starts moto on a free port with signatures and policies enforced; sets
# $endpoint and $moto_pid, and stops moto when the script exits.
start_moto() {
    local log=$1 port
    port=$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    endpoint="http://127.0.0.1:$port"
    INITIAL_NO_AUTH_ACTION_COUNT=3 .venv/bin/moto_server -H 127.0.0.1 -p "$port" >"$log" 2>&1 &
    moto_pid=$!
    trap 'kill $moto_pid 2>/dev/null || true' EXIT
    for _ in $(seq 300); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.1
    done
    local admin
    admin=$(iam bootstrap)
    MOTO_ADMIN_KEY=$(echo "$admin" | json_field key_id)
    MOTO_ADMIN_SECRET=$(echo "$admin" | json_field secret)
    export MOTO_ADMIN_KEY MOTO_ADMIN_SECRET
}

iam() { .venv/bin/python tests/moto/moto_iam.py --endpoint "$endpoint" "$@"; }
json_field() { .venv/bin/python -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }

# Creates IAM users alice (one key) and rotator (the guide's four actions on
# alice), and writes a vault with alice's PAM user record (uid user1) to $1.
# Sets $rotator_id, $rotator_secret and $old_id.
setup_alice() {
    local vault=$1 rotator old
    iam user alice >/dev/null
    iam user rotator --policy-on alice >/dev/null
    rotator=$(iam create-key rotator)
    rotator_id=$(echo "$rotator" | json_field key_id)
    rotator_secret=$(echo "$rotator" | json_field secret)
    old=$(iam create-key alice)
    old_id=$(echo "$old" | json_field key_id)
    cat >"$vault" <<JSON
{"records": [
  {"uid": "user1", "type": "pamUser", "title": "alice",
   "fields": [{"type": "login", "value": ["alice"]}, {"type": "password", "value": [""]}],
   "custom": [{"type": "text", "label": "aws_access_key_id", "value": ["$old_id"]}]}
]}
JSON
    chmod 600 "$vault"
}

# Prints the value of the field labelled $3 in record $2 of vault $1.
vault_field() {
    .venv/bin/python - "$1" "$2" "$3" <<'PY'
import json, sys
doc = json.load(open(sys.argv[1]))
rec = next(r for r in doc["records"] if r["uid"] == sys.argv[2])
print(next(f["value"][0] for f in rec.get("fields", []) + rec.get("custom", []) if f.get("label") == sys.argv[3]))
PY
}
