#!/bin/sh
# The image's entrypoint, run under tini (PID 1 forwards SIGTERM to the node and
# reaps the children that `exec:` executors leave).
#
# One job before the command runs: a node whose key was made outside the container
# (the federation's genesis lists it) gets that key into its data dir. With
# POLITY_IDENTITY_KEY naming a mounted key file and no key in the data dir yet, the
# key is copied there with mode 0600; an existing key is never replaced, so a
# volume keeps the identity it was first given.
set -eu

data_dir="${POLITY_DATA_DIR:-/var/lib/polity}"
if [ -n "${POLITY_IDENTITY_KEY:-}" ]; then
  if [ ! -r "$POLITY_IDENTITY_KEY" ]; then
    echo "polity-entrypoint: POLITY_IDENTITY_KEY=$POLITY_IDENTITY_KEY is not a readable file" >&2
    exit 64
  fi
  if [ ! -e "$data_dir/identity.key" ]; then
    umask 077
    cp "$POLITY_IDENTITY_KEY" "$data_dir/identity.key.partial"
    chmod 600 "$data_dir/identity.key.partial"
    mv "$data_dir/identity.key.partial" "$data_dir/identity.key"
  fi
fi
exec "$@"
