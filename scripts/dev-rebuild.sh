#!/usr/bin/env bash
# Developer loop for the patch series: copy .work/ (npm run patches:checkout) into node_modules and rebuild
# in place with ccache (seconds for a one-file change). The result is not cached and the manifest is not
# updated: export the series (npm run patches:export) and run npm run build:llama for a real build.
# The loader refuses a build rebuilt in place unless KEEPKV_ALLOW_DEV_BUILD=1 is set; npm run build:llama
# sees that it is not the recorded build and puts the recorded one back.
set -euo pipefail
cd "$(dirname "$0")/.."
node dist/scripts/patches.js sync
export NODE_LLAMA_CPP_SKIP_DOWNLOAD=true CCACHE_BASEDIR="$PWD"
export NODE_LLAMA_CPP_CMAKE_OPTION_KEEPKV=ON
if command -v ccache >/dev/null; then
    export NODE_LLAMA_CPP_CMAKE_OPTION_CMAKE_C_COMPILER_LAUNCHER=ccache
    export NODE_LLAMA_CPP_CMAKE_OPTION_CMAKE_CXX_COMPILER_LAUNCHER=ccache
fi
node node_modules/node-llama-cpp/dist/cli/cli.js source build --gpu "${KEEPKV_GPU:-false}" --noUsageExample
echo "[keepkv dev] rebuilt in place: run with KEEPKV_ALLOW_DEV_BUILD=1; npm run build:llama puts the recorded build back" >&2
