#!/bin/sh
# Entrypoint of the keepkv images: makes sure the patched llama.cpp build matches this machine (it is
# compiled for the CPU that built the image; on another CPU it is rebuilt once and cached in
# KEEPKV_BUILD_CACHE, a volume in docker-compose.yml), then runs the server with the given arguments.
# KEEPKV_SKIP_BUILD_CHECK=1 skips the check (the server still refuses a build that does not match).
set -eu
cd /app
if [ "${KEEPKV_SKIP_BUILD_CHECK:-0}" != "1" ]; then
    node dist/scripts/build-llama.js --gpu "${KEEPKV_GPU:-cpu}" >&2
fi
exec node dist/server/main.js "$@"
