#!/usr/bin/env bash
# Drives oidc-provider's development login and consent pages with curl (the
# authorization code flow with scope offline_access) and prints the token
# response JSON, which holds a refresh token. Usage: get-refresh-token.sh ISSUER
set -euo pipefail
ISS=$1; CID=${2:-basic-client}; SEC=${3:-basic-secret}; USER_=${4:-alice}
CB=http://127.0.0.1/cb
JAR=$(mktemp); trap 'rm -f "$JAR"' EXIT
C=(curl -sS -b "$JAR" -c "$JAR" -o /dev/null -w '%{redirect_url}')
abs() { case "$1" in http*) echo "$1";; *) echo "$ISS$1";; esac; }
loc=$("${C[@]}" "$ISS/auth?client_id=$CID&response_type=code&redirect_uri=$CB&scope=openid%20offline_access%20read&prompt=consent&state=s1")
for _ in 1 2 3 4 5 6; do
  case "$loc" in
    "$CB"*) break;;
    */interaction/*)
      uid=${loc##*/interaction/}
      page=$(curl -sS -b "$JAR" -c "$JAR" "$(abs "$loc")")
      if grep -q 'name="login"' <<<"$page"; then
        loc=$("${C[@]}" -d prompt=login -d "login=$USER_" -d password=x "$ISS/interaction/$uid")
      else
        loc=$("${C[@]}" -d prompt=consent "$ISS/interaction/$uid")
      fi;;
    *) loc=$("${C[@]}" "$(abs "$loc")");;
  esac
done
code=$(sed -n 's/.*[?&]code=\([^&]*\).*/\1/p' <<<"$loc")
[ -n "$code" ] || { echo "no code; last location: $loc" >&2; exit 1; }
curl -sS -u "$CID:$SEC" -d grant_type=authorization_code -d "code=$code" -d "redirect_uri=$CB" "$ISS/token"
