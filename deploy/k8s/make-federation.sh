#!/usr/bin/env bash
# Makes the federation the manifests deploy, in deploy/k8s/federation/ (keep it
# secret; kustomization.yaml turns it into the polity-genesis ConfigMap and the
# polity-api-token and polity-keys Secrets):
#   genesis.pb             9 members, polity-region-R-I in region-R, continent-(R mod 2)
#   keys/<pod name>.key    each pod's identity key
#   token                  the API token every node requires
#   authority/             the genesis authority's key (for `polity genesis add-member`)
# Needs the polity binary: on PATH, or POLITY_BIN=/path/to/polity.
set -euo pipefail
cd "$(dirname "$0")"
polity=${POLITY_BIN:-polity}
out=federation
if [ -e "$out/genesis.pb" ]; then
  echo "$out/genesis.pb exists: remove $out/ to make a new federation" >&2
  exit 1
fi
mkdir -p "$out/keys"
chmod 700 "$out"
members=$(mktemp -d)
trap 'rm -rf "$members"' EXIT
caps=(--capability echo --capability sha256 --capability wordcount --capability sum)
first=1
for region in 0 1 2; do
  for index in 0 1 2; do
    pod=polity-region-$region-$index
    place=(--member-dir "$members/$pod" --region "region-$region"
           --continent "continent-$((region % 2))" "${caps[@]}")
    if [ $first = 1 ]; then
      "$polity" genesis init --out "$out/genesis.pb" --federation polity \
        --authority-dir "$out/authority" "${place[@]}" >/dev/null
      first=0
    else
      "$polity" genesis add-member "$out/genesis.pb" --authority-dir "$out/authority" \
        "${place[@]}" >/dev/null
    fi
    install -m 600 "$members/$pod/identity.key" "$out/keys/$pod.key"
  done
done
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$out/token"
chmod 600 "$out/token"
"$polity" genesis show "$out/genesis.pb"
