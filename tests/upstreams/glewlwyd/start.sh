#!/usr/bin/env bash
# Starts Glewlwyd (Debian package `glewlwyd`) on 127.0.0.1:$PORT with a fresh
# SQLite database in $DIR, then provisions it through its admin API:
#   an OIDC plugin (RS256 JWTs, access tokens for $TTL s, one-use rotating
#   refresh tokens; password, client_credentials and refresh grants), scope
#   "read", client gl-client/gl-secret (Basic or body auth), user alice/alice-pw.
# Writes the server's pid to $DIR/glewlwyd.pid. Token endpoint:
#   http://127.0.0.1:$PORT/api/oidc/token
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
: "${PORT:?}" "${DIR:?}"; TTL=${TTL:-60}
mkdir -p "$DIR"
zcat /usr/share/doc/glewlwyd/database/init.sqlite3.sql.gz | sqlite3 "$DIR/glewlwyd.db"
sed -e "s#@PORT@#$PORT#g; s#@SCHEME@#http#; s#@TLS@#false#; s#@TLS_KEY@##; s#@TLS_CERT@##; s#@DB@#$DIR/glewlwyd.db#" \
  "$HERE/glewlwyd.conf.in" >"$DIR/glewlwyd.conf"
glewlwyd -c "$DIR/glewlwyd.conf" >"$DIR/glewlwyd.log" 2>&1 &
echo $! >"$DIR/glewlwyd.pid"
API="http://127.0.0.1:$PORT/api"
for _ in $(seq 1 100); do [ "$(curl -s -o /dev/null -w '%{http_code}' "$API/")" != 000 ] && break; sleep 0.1; done
C=(curl -fsS -b "$DIR/jar" -c "$DIR/jar" -H 'Content-Type: application/json' -o /dev/null)
"${C[@]}" -d '{"username":"admin","password":"password"}' "$API/auth/"
openssl genrsa -out "$DIR/sign.key" 2048 2>/dev/null
openssl rsa -in "$DIR/sign.key" -pubout -out "$DIR/sign.pub" 2>/dev/null
python3 - "$DIR" "http://127.0.0.1:$PORT" "$TTL" >"$DIR/plugin.json" <<'PY'
import json, sys
run, iss, ttl = sys.argv[1], sys.argv[2], int(sys.argv[3])
print(json.dumps({"module": "oidc", "name": "oidc", "display_name": "OIDC", "enabled": True, "parameters": {
  "iss": iss, "jwt-type": "rsa", "jwt-key-size": "256",
  "key": open(f"{run}/sign.key").read(), "cert": open(f"{run}/sign.pub").read(),
  "access-token-duration": ttl, "refresh-token-duration": 86400, "code-duration": 600,
  "refresh-token-rolling": True, "refresh-token-one-use": "always", "allow-non-oidc": True,
  "auth-type-code-enabled": True, "auth-type-token-enabled": False, "auth-type-none-enabled": False,
  "auth-type-password-enabled": True, "auth-type-client-enabled": True, "auth-type-refresh-enabled": True,
  "scope": []}}))
PY
"${C[@]}" -d @"$DIR/plugin.json" "$API/mod/plugin/"
"${C[@]}" -d '{"name":"read","display_name":"read","description":"read","password_required":false}' "$API/scope/"
"${C[@]}" -d '{"client_id":"gl-client","name":"gl-client","confidential":true,"client_secret":"gl-secret","token_endpoint_auth_method":["client_secret_basic","client_secret_post"],"enabled":true,"scope":["read"],"authorization_type":["client_credentials","password","refresh_token","code"],"redirect_uri":["http://127.0.0.1/cb"]}' "$API/client/"
"${C[@]}" -d '{"username":"alice","name":"Alice","password":"alice-pw","enabled":true,"scope":["read","openid"]}' "$API/user/"
echo "http://127.0.0.1:$PORT/api/oidc/token"
