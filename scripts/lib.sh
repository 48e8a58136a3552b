# shellcheck shell=bash
# Set-up and service management for hubctl. Sourced, not run.
#
# Every environment (demo, test, bench, chaos) has its own data directory var/<env>/ and its own
# loopback ports, so a test run never touches the demo's data and none of them clash with
# system services on the standard ports (5432, 1883, 80).

# Ports per environment: (postgres mqtt http). Away from the standard ports on purpose.
declare -A PG_PORTS=([demo]=54381 [test]=54382 [bench]=54383 [chaos]=54384)
declare -A MQTT_PORTS=([demo]=18831 [test]=18832 [bench]=18833 [chaos]=18834)
declare -A HTTP_PORTS=([demo]=8081 [test]=8082 [bench]=8083 [chaos]=8084)

log() { printf '\033[1;34m[hubctl]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31m[hubctl] error:\033[0m %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

hub_env() {
  ENVNAME="$1"
  [ -n "${PG_PORTS[$ENVNAME]:-}" ] || die "unknown environment $ENVNAME (demo, test, bench or chaos)"
  # HUBCTL_SLOT=N (1-9) runs a second copy of an environment beside the first (another
  # checkout's test suite, say): ports shifted by 100*N, data under var/<env>-N/.
  local slot="${HUBCTL_SLOT:-0}"
  [[ "$slot" =~ ^[0-9]$ ]] || die "HUBCTL_SLOT must be a digit, not $slot"
  VAR="$ROOT/var/$ENVNAME"
  [ "$slot" = 0 ] || VAR="$VAR-$slot"
  VENV="$ROOT/.venv"
  # The code runs from this checkout, not from site-packages (pyproject.toml packages none
  # of it): every process hubctl starts, and each one those start, imports it from here.
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
  PG_PORT=$(( ${PG_PORTS[$ENVNAME]} + 100 * slot ))
  MQTT_PORT=$(( ${MQTT_PORTS[$ENVNAME]} + 100 * slot ))
  HTTP_PORT="${HUB_HTTP_PORT:-$(( ${HTTP_PORTS[$ENVNAME]} + 100 * slot ))}"
  # Existing services named by the caller win: nothing is installed or started for them.
  EXTERNAL_DB="${HUB_DATABASE_URL:-}"
  EXTERNAL_MQTT="${HUB_MQTT_URL:-}"
  mkdir -p "$VAR"
}

# The account that owns the private PostgreSQL cluster and runs Mosquitto. PostgreSQL
# refuses to run as root, so root hands both to an unprivileged system user.
service_user() {
  if [ "$(id -u)" -ne 0 ]; then id -un; return; fi
  if ! id gridhub >/dev/null 2>&1; then
    useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin gridhub
  fi
  echo gridhub
}

as_service() {
  local u; u="$(service_user)"
  if [ "$(id -un)" = "$u" ]; then "$@"; else runuser -u "$u" -- "$@"; fi
}

pg_bindir() {
  local major
  major="$(ls /usr/lib/postgresql 2>/dev/null | sort -n | tail -1)"
  [ -n "$major" ] && echo "/usr/lib/postgresql/$major/bin"
}

# ---------------------------------------------------------------- packages
apt_missing() {
  local p missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  echo "${missing[@]:-}"
}

apt_install() {
  local missing
  missing="$(apt_missing "$@")"
  [ -n "${missing// /}" ] || return 0
  log "installing Debian packages: $missing"
  if [ ! -f "$ROOT/var/.apt-updated" ] || [ -n "$(find "$ROOT/var/.apt-updated" -mmin +1440)" ]; then
    as_root apt-get update -q >/dev/null
    touch "$ROOT/var/.apt-updated"
  fi
  # shellcheck disable=SC2086
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing >/dev/null
}

python_bin() {
  local c
  for c in python3 python3.13 python3.12 python3.11; do
    if command -v "$c" >/dev/null 2>&1 && "$c" -c "import sys; sys.exit(sys.version_info < (3, 11))" 2>/dev/null; then
      command -v "$c"; return 0
    fi
  done
  die "Python 3.11 or newer is required"
}

setup_packages() {
  local envname="$1" pkgs=()
  [ -n "$EXTERNAL_DB" ] || pkgs+=(postgresql)
  [ -n "$EXTERNAL_MQTT" ] || pkgs+=(mosquitto)
  pkgs+=(mosquitto-clients)
  if [ "$envname" = test ]; then pkgs+=(chromium fonts-noto-cjk); fi
  # venv and ensurepip come separately on Debian's own Python.
  if ! "$(python_bin)" -c 'import ensurepip, venv' 2>/dev/null; then pkgs+=(python3-venv); fi
  apt_install "${pkgs[@]}"
  [ -n "$EXTERNAL_DB" ] || setup_timescaledb
}

# TimescaleDB: a binary package where one exists for the installed server, else Debian's own
# source package (in trixie) built against it. Skipped when the extension is installed.
setup_timescaledb() {
  local bindir major sharedir
  bindir="$(pg_bindir)" || die "PostgreSQL server not found"
  major="$(basename "$(dirname "$bindir")")"
  sharedir="/usr/share/postgresql/$major"
  [ -f "$sharedir/extension/timescaledb.control" ] && return 0
  local bin
  for bin in "postgresql-$major-timescaledb" "timescaledb-2-postgresql-$major"; do
    if apt-cache policy "$bin" 2>/dev/null | grep -q 'Candidate: [0-9]'; then
      apt_install "$bin"
      [ -f "$sharedir/extension/timescaledb.control" ] && return 0
    fi
  done
  log "building TimescaleDB (Apache edition) from Debian's source package for PostgreSQL $major"
  apt_install "postgresql-server-dev-$major" cmake make gcc dpkg-dev
  as_root bash "$ROOT/scripts/build-timescaledb.sh" "$ROOT/var/build" "$bindir/pg_config"
  [ -f "$sharedir/extension/timescaledb.control" ] || die "TimescaleDB build did not install the extension"
}

setup_venv() {
  local stamp="$VENV/.gridhub-stamp" want
  want="$(cat "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then return 0; fi
  log "installing the Python environment in .venv"
  [ -x "$VENV/bin/python" ] || "$(python_bin)" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  # The dependencies only: gridhub packages none of its code (pyproject.toml,
  # [tool.setuptools]); it runs from this tree, on PYTHONPATH (hub_env). An editable
  # install from before that leaves its import hook behind: remove it.
  rm -f "$VENV"/lib/python3*/site-packages/__editable__*gridhub*
  "$VENV/bin/python" -m pip install -q "$ROOT[dev]" >"$ROOT/var/pip.log" 2>&1 \
    || { tail -30 "$ROOT/var/pip.log" >&2; die "pip install failed (var/pip.log)"; }
  echo "$want" > "$stamp"
}

# Front-end libraries other than Leaflet (XStatic) come from the npm registry, pinned by
# frontend/package-lock.json, and are served from frontend/node_modules: never a CDN.
setup_frontend() {
  [ -f "$ROOT/frontend/package-lock.json" ] || return 0
  command -v npm >/dev/null 2>&1 || apt_install nodejs npm
  local stamp="$ROOT/frontend/node_modules/.gridhub-stamp" want
  want="$(sha256sum "$ROOT/frontend/package-lock.json" | cut -c1-16)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then return 0; fi
  log "installing front-end libraries (npm ci)"
  (cd "$ROOT/frontend" && npm ci --no-audit --no-fund --ignore-scripts >"$ROOT/var/npm.log" 2>&1) \
    || { tail -20 "$ROOT/var/npm.log" >&2; die "npm ci failed (var/npm.log)"; }
  echo "$want" > "$stamp"
}

setup_all() {
  setup_packages "$1"
  setup_venv
  setup_frontend
  export_env
}

# ---------------------------------------------------------------- secrets and env
secret() {
  # A random secret generated on first use and kept under var/<env>/secrets/.
  local name="$1" f="$VAR/secrets/$1"
  if [ ! -s "$f" ]; then
    mkdir -p "$VAR/secrets"; chmod 700 "$VAR/secrets"
    head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' > "$f"
    chmod 600 "$f"
  fi
  cat "$f"
}

export_env() {
  if [ -n "$EXTERNAL_DB" ]; then
    export HUB_DATABASE_URL="$EXTERNAL_DB"
  else
    export HUB_DATABASE_URL="postgresql://gridhub:$(secret db-password)@127.0.0.1:$PG_PORT/gridhub"
    # Superuser URL over the private socket: used by tests to create scratch databases.
    export HUB_ADMIN_DATABASE_URL="postgresql://postgres@/postgres?host=$VAR/run&port=$PG_PORT"
  fi
  if [ -n "$EXTERNAL_MQTT" ]; then
    export HUB_MQTT_URL="$EXTERNAL_MQTT"
  else
    # Our broker refuses anonymous clients: each process logs in with its own account
    # (generated secrets, see mqtt_configure). The hub; the demo's simulators; the
    # benchmarks' load generators; the tests' publishers (the last three are gateways).
    local at="127.0.0.1:$MQTT_PORT"
    export HUB_MQTT_URL="mqtt://hub:$(secret mqtt-hub)@$at"
    export HUB_SIM_MQTT_URL="mqtt://gw-sim:$(secret mqtt-gw-sim)@$at"
    export HUB_BENCH_MQTT_URL="mqtt://gw-bench:$(secret mqtt-gw-bench)@$at"
    export HUB_TEST_MQTT_URL="mqtt://gw-test:$(secret mqtt-gw-test)@$at"
    if [ "$ENVNAME" = demo ]; then
      # The demo hub renders the broker's files and reloads it when accounts change through
      # the API. Not in test and bench: their hubs run on scratch databases, whose accounts
      # must never replace the broker's.
      # shellcheck disable=SC2046  # paths under $ROOT without spaces (as elsewhere here)
      export $(mqtt_file_vars)
    fi
  fi
  export HUB_HTTP_PORT="$HTTP_PORT"
  export HUB_ENV="$ENVNAME"
  export HUB_VAR_DIR="$VAR"
}

print_env() {
  export_env
  local v
  for v in $(compgen -e | grep '^HUB_' | sort) PYTHONPATH; do printf 'export %s=%q\n' "$v" "${!v}"; done
}

# ---------------------------------------------------------------- services
pg_start() {
  [ -z "$EXTERNAL_DB" ] || return 0
  local bindir u data="$VAR/pg" run="$VAR/run"
  bindir="$(pg_bindir)"; u="$(service_user)"
  mkdir -p "$run" "$VAR/log"; chown "$u" "$run" "$VAR/log"; chmod 700 "$run"
  if [ ! -f "$data/PG_VERSION" ]; then
    log "creating the PostgreSQL cluster in $data"
    mkdir -p "$data"; chown "$u" "$data"; chmod 700 "$data"
    as_service "$bindir/initdb" -D "$data" -U postgres -A trust --encoding=UTF8 --locale=C.UTF-8 >/dev/null
    cat >> "$data/postgresql.conf" <<EOF
# gridhub private cluster
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$run'
shared_preload_libraries = 'timescaledb'
timescaledb.telemetry_level = off
max_connections = 200
shared_buffers = 512MB
# COPY bursts of telemetry: fewer checkpoints under load.
max_wal_size = 4GB
EOF
    # Loopback only; the application role authenticates with its password.
    cat > "$data/pg_hba.conf" <<EOF
local all postgres trust
local all all scram-sha-256
host all all 127.0.0.1/32 scram-sha-256
EOF
  fi
  if ! as_service "$bindir/pg_ctl" -D "$data" status >/dev/null 2>&1; then
    as_service "$bindir/pg_ctl" -D "$data" -l "$VAR/log/pg.log" -w -t 60 start >/dev/null \
      || { tail -20 "$VAR/log/pg.log" >&2; die "PostgreSQL did not start"; }
  fi
  local pw; pw="$(secret db-password)"
  as_service env PGOPTIONS='-c client_min_messages=warning' \
    "$bindir/psql" -U postgres -h "$run" -p "$PG_PORT" -d postgres -qAt -v ON_ERROR_STOP=1 >/dev/null <<EOF
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'gridhub') THEN
    CREATE ROLE gridhub LOGIN CREATEDB;
  END IF;
END \$\$;
ALTER ROLE gridhub PASSWORD '$pw';
\c template1
DROP EXTENSION IF EXISTS timescaledb;
EOF
  # The hub creates the timescaledb extension in its own database when it migrates; no
  # template carries it, because TimescaleDB's background scheduler sits in every database
  # that has it and a busy template makes CREATE DATABASE fail.
  local psql_su=("$bindir/psql" -U postgres -h "$run" -p "$PG_PORT" -qAt -v ON_ERROR_STOP=1)
  if ! as_service "${psql_su[@]}" -d postgres \
      -c "SELECT 1 FROM pg_database WHERE datname='gridhub'" | grep -q 1; then
    as_service "${psql_su[@]}" -d postgres \
      -c "CREATE DATABASE gridhub OWNER gridhub" >/dev/null
  fi
}

pg_stop() {
  [ -z "$EXTERNAL_DB" ] || return 0
  [ -f "$VAR/pg/PG_VERSION" ] || return 0
  as_service "$(pg_bindir)/pg_ctl" -D "$VAR/pg" -m fast -w stop >/dev/null 2>&1 || true
}

# The broker's account files and pid file, as the hub's settings name them: exported (demo),
# or given to one command.
mqtt_file_vars() {
  echo "HUB_MQTT_PASSWORD_FILE=$VAR/mqtt/passwords" "HUB_MQTT_ACL_FILE=$VAR/mqtt/acl" \
    "HUB_MQTT_BROKER_PID_FILE=$VAR/mqtt/mosquitto.pid" \
    "HUB_MQTT_CLIENT_IDS_FILE=$VAR/mqtt/client-ids.json"
}

# Mosquitto's dynamic-security plugin (binds client ids to accounts), wherever the
# distribution put it.
dynsec_plugin() {
  local f
  for f in /usr/lib/*/mosquitto_dynamic_security.so /usr/lib/mosquitto_dynamic_security.so \
           /usr/lib64/mosquitto_dynamic_security.so /usr/local/lib/mosquitto_dynamic_security.so; do
    [ -f "$f" ] && { echo "$f"; return 0; }
  done
  die "Mosquitto's dynamic-security plugin (mosquitto_dynamic_security.so) not found"
}

# Gateway and service accounts the set-up creates, KIND:NAME; each NAME's password is the
# secret mqtt-NAME (generated on first run). Same names as in export_env.
MQTT_SERVICE_ACCOUNTS=(service:hub fleet:gw-sim gateway:gw-bench fleet:gw-test)

# The broker's configuration and accounts, before it starts (PostgreSQL must be up: the
# accounts live in the database, and the command migrates it). A running broker is reloaded.
mqtt_configure() {
  [ -z "$EXTERNAL_MQTT" ] || return 0
  local u spec name args=()
  u="$(service_user)"
  mkdir -p "$VAR/mqtt/data"
  chown -R "$u" "$VAR/mqtt"
  "$VENV/bin/python" -m hub.mosquitto_conf --set "PORT=$MQTT_PORT" --set BIND=127.0.0.1 \
      --set "DATA=$VAR/mqtt/data/" --set "USER=$u" --set "LOG_DEST=file $VAR/mqtt/mosquitto.log" \
      --set "PID=$VAR/mqtt/mosquitto.pid" --set "PASSWORDS=$VAR/mqtt/passwords" \
      --set "ACL=$VAR/mqtt/acl" --set "CLIENT_IDS=$VAR/mqtt/client-ids.json" \
      --set "DYNSEC_PLUGIN=$(dynsec_plugin)" > "$VAR/mqtt/mosquitto.conf"
  for spec in "${MQTT_SERVICE_ACCOUNTS[@]}"; do
    name="${spec#*:}"
    secret "mqtt-$name" >/dev/null
    args+=(--account "$spec:$VAR/secrets/mqtt-$name")
  done
  # shellcheck disable=SC2046
  env $(mqtt_file_vars) "$VENV/bin/python" -m hub mqtt-accounts setup "${args[@]}" >/dev/null \
    || die "could not write the MQTT accounts (python -m hub mqtt-accounts setup)"
  # mosquitto_pub reads default options from $XDG_CONFIG_HOME/mosquitto_pub: the health
  # check logs in as the hub without its password on a command line (visible in ps).
  printf -- '-u hub\n-P %s\n' "$(secret mqtt-hub)" > "$VAR/secrets/mosquitto_pub"
  chmod 600 "$VAR/secrets/mosquitto_pub"
}

mqtt_start() {
  [ -z "$EXTERNAL_MQTT" ] || return 0
  local conf="$VAR/mqtt/mosquitto.conf"
  if [ -f "$VAR/mqtt/mosquitto.pid" ] && kill -0 "$(cat "$VAR/mqtt/mosquitto.pid")" 2>/dev/null; then
    return 0
  fi
  # Tests and benchmarks start from an empty broker: sessions of earlier runs' hubs are not
  # theirs (each run has its own scratch databases), and a benchmark's leftover queues made
  # the broker's store 131 MB, which the next run's broker first had to load.
  if [ "$ENVNAME" = test ] || [ "$ENVNAME" = bench ]; then rm -f "$VAR/mqtt/data/mosquitto.db"; fi
  as_service mosquitto -c "$conf" -d
  local i
  for i in $(seq 1 50); do
    # A CONNACK and a PUBACK: the broker is up and the hub's account works (the message
    # itself is dropped: no account may write that topic).
    XDG_CONFIG_HOME="$VAR/secrets" mosquitto_pub -h 127.0.0.1 -p "$MQTT_PORT" \
      -t gridhub/healthcheck -n -q 1 2>/dev/null && return 0
    sleep 0.1
  done
  tail -20 "$VAR/mqtt/mosquitto.log" >&2 || true
  die "Mosquitto did not start on port $MQTT_PORT"
}

mqtt_stop() {
  [ -z "$EXTERNAL_MQTT" ] || return 0
  local pidf="$VAR/mqtt/mosquitto.pid" pid i
  [ -f "$pidf" ] || return 0
  pid="$(cat "$pidf")"
  kill "$pid" 2>/dev/null || true
  # Mosquitto writes its store on the way out (queued QoS 1 messages: acknowledged data), so
  # it is given time to finish; the next start would fail on the port it still holds.
  for i in $(seq 1 600); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && log "Mosquitto (pid $pid) still saving after 60 s; left running"
  rm -f "$pidf"
}

# Order matters: the broker's account files come from the database.
services_start() { pg_start; mqtt_configure; mqtt_start; }
services_stop() { mqtt_stop; pg_stop; }
services_status() {
  export_env
  # Passwords stay out of a status line (`./hubctl env` prints them for eval on purpose).
  echo "database: $(printf %s "$HUB_DATABASE_URL" | sed -E 's#://([^:/@]+):[^@]*@#://\1:***@#')"
  echo "mqtt:     $(printf %s "$HUB_MQTT_URL" | sed -E 's#://([^:/@]+):[^@]*@#://\1:***@#')"
  [ -n "$EXTERNAL_DB" ] || as_service "$(pg_bindir)/pg_ctl" -D "$VAR/pg" status | head -1 || true
  if [ -z "$EXTERNAL_MQTT" ] && [ -f "$VAR/mqtt/mosquitto.pid" ] && kill -0 "$(cat "$VAR/mqtt/mosquitto.pid")" 2>/dev/null; then
    echo "mosquitto: running (pid $(cat "$VAR/mqtt/mosquitto.pid"))"
  fi
}

# ---------------------------------------------------------------- commands
DEMO_PIDS=()
demo_stop() {
  trap - INT TERM EXIT
  log "stopping"
  local p
  for p in "${DEMO_PIDS[@]:-}"; do [ -n "$p" ] && kill -INT "$p" 2>/dev/null || true; done
  for p in "${DEMO_PIDS[@]:-}"; do [ -n "$p" ] && wait "$p" 2>/dev/null || true; done
  services_stop
  exit 0
}

# The demo's credentials, generated on first run under var/demo/secrets/ and registered
# (again) on every run, so they always match the files: the admin who logs in to the
# console, and the simulators' API token. The simulators answer dispatches for every unit
# and verify and close cases as the operators would, so their token is a supervisor's
# (a unit token would confine them to one unit's cases). Nothing here exists outside the
# demo: production users and tokens are made with `python -m hub create-user/create-token`.
demo_credentials() {
  local py="$VENV/bin/python"
  secret admin-password >/dev/null
  secret sim-token >/dev/null
  secret crews-token >/dev/null
  "$py" -m hub create-user admin --role admin --display-name "Demo admin" --update \
    --password-file "$VAR/secrets/admin-password" >/dev/null
  "$py" -m hub create-token --name demo-simulators --role supervisor \
    --token-file "$VAR/secrets/sim-token" 2>/dev/null
  # The crews' own steps are recorded under this one: the hub refuses verification by the
  # principal that handled a case (simulators/crews.py FIELD_TOKEN_ENV).
  "$py" -m hub create-token --name demo-crews --role operator \
    --token-file "$VAR/secrets/crews-token" 2>/dev/null
}

run_demo() {
  local py="$VENV/bin/python"
  "$py" -m hub migrate
  "$py" -m hub load-town --if-empty
  # The town's past (simulators/backfill.py), on the first start only: cases before the
  # hub runs, the sensors' readings beside it. A second start skips both (one query each).
  "$py" -m simulators.backfill --part cases
  demo_credentials
  "$py" -m hub serve &
  DEMO_PIDS+=($!)
  "$py" -m hub wait-ready --timeout 60
  "$py" -m simulators.backfill --part readings &
  DEMO_PIDS+=($!)
  HUB_API_TOKEN="$(secret sim-token)" HUB_FIELD_TOKEN="$(secret crews-token)" \
    "$py" -m simulators.run "$@" &
  DEMO_PIDS+=($!)
  log "console: http://127.0.0.1:$HTTP_PORT/   (Ctrl-C stops everything)"
  log "log in as admin; the password is in $VAR/secrets/admin-password"
  wait
}

run_tests() {
  local py="$VENV/bin/python" rc=0
  log "ruff"
  "$VENV/bin/ruff" check . || rc=1
  log "mypy (strict on core/, ingest/, dispatch/, hub/ and simulators/)"
  "$VENV/bin/mypy" || rc=1
  log "import layers (import-linter)"
  "$VENV/bin/lint-imports" || rc=1
  log "pytest"
  "$py" -m pytest "$@" || rc=$?
  return $rc
}
