#!/bin/sh
# Container entrypoint: choose the data directory, then exec the command (CMD).
#
# STUDIO_DATA_DIR (default /data/studio) lives on the persistent volume STUDIO_PERSISTENT_DIR (default /data):
# Spaces mounts persistent storage there when it is bought, `docker run -v NAME:/data` mounts a volume there.
# - The data directory can be created and written: use it (warn when /data is not a mount: then it is the
#   container's own layer, lost with the container).
# - It cannot, and a database URL is set, or the persistent directory exists but is not writable (a volume owned
#   by another uid): refuse to start. Falling back would keep rows in the database but lose the images,
#   trajectories and adapters they reference, or silently write to storage that vanishes.
# - It cannot, and there is no persistent directory at all: fall back to STUDIO_FALLBACK_DATA_DIR, loudly.
set -eu
data="${STUDIO_DATA_DIR:-/data/studio}"
persistent="${STUDIO_PERSISTENT_DIR:-/data}"
if mkdir -p "$data" 2>/dev/null && [ -w "$data" ]; then
    if [ -d "$persistent" ] && [ "$(stat -c %d "$persistent")" = "$(stat -c %d /)" ]; then
        echo "warning: $persistent is not a mounted volume: data in $data is lost when the container is removed" >&2
    fi
elif [ -n "${STUDIO_DATABASE_URL:-}" ]; then
    echo "error: $data is not writable by uid $(id -u), and STUDIO_DATABASE_URL is set: the database would" \
         "reference images and adapters that no restart keeps. Mount writable storage at $persistent." >&2
    exit 1
elif [ -e "$persistent" ]; then
    echo "error: $persistent exists but $data cannot be created or written by uid $(id -u):" \
         "give the volume to uid 1000 (e.g. chown 1000:1000) instead of losing data on restart." >&2
    exit 1
else
    fallback="${STUDIO_FALLBACK_DATA_DIR:?STUDIO_FALLBACK_DATA_DIR is not set}"
    echo "warning: no persistent storage at $persistent: using $fallback, which is lost on restart" >&2
    mkdir -p "$fallback"
    STUDIO_DATA_DIR="$fallback"
    export STUDIO_DATA_DIR
fi
exec "$@"
