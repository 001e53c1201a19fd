# Shared by the bin/ scripts: where things live and how the local services are reached.
# Every value can be overridden from the environment.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUN_DIR="${RUN_DIR:-$ROOT/.run}"
VENV="${VENV:-$ROOT/.venv}"
PG_BIN="${PG_BIN:-/usr/lib/postgresql/15/bin}"
PG_PORT="${PG_PORT:-54329}"
PG_DATA="$RUN_DIR/postgres"
PG_SOCKET_DIR="$RUN_DIR/pgsocket"
if [[ $EUID -eq 0 ]] && id postgres >/dev/null 2>&1 && ! runuser -u postgres -- test -x "$ROOT" 2>/dev/null; then
  # The server runs as the postgres user; when a parent of the checkout is private (a clone under
  # /root, say) the cluster lives in a per-checkout directory that user can reach.
  PG_DATA="/var/lib/postgresql/fashionsite-$(printf '%s' "$ROOT" | sha256sum | cut -c1-12)"
  PG_SOCKET_DIR="$PG_DATA-socket"
fi
REDIS_PORT="${REDIS_PORT:-63799}"
REDIS_DIR="$RUN_DIR/redis"

PG_PASSWORD_FILE="$RUN_DIR/db_password"

# A new URL-safe secret of $2 random bytes in file $1, only its owner can read, unless it holds one.
ensure_secret() {
  mkdir -p "$(dirname "$1")"
  [[ -s "$1" ]] || (umask 077 && head -c "$2" /dev/urandom | base64 -w0 | tr '+/' '-_' | tr -d '=' >"$1")
  chmod 600 "$1"
}

# The app's role logs in with a password (bin/services gives the role the one in this file).
if [[ -z "${DATABASE_URL:-}" ]]; then
  ensure_secret "$PG_PASSWORD_FILE" 24
  DATABASE_URL="postgres://fashionsite:$(<"$PG_PASSWORD_FILE")@127.0.0.1:$PG_PORT/fashionsite"
fi
export DATABASE_URL
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:$REDIS_PORT/0}"
export PATH="$VENV/bin:$PATH"

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
