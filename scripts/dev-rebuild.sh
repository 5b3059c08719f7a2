#!/usr/bin/env bash
# Developer loop for the patch series: copy .work/ (npm run patches:checkout) into node_modules and rebuild
# in place with ccache (seconds for a one-file change). The result is not cached and the manifest is not
# updated: export the series (npm run patches:export) and run npm run build:llama for a real build.
set -euo pipefail
cd "$(dirname "$0")/.."
node dist/scripts/patches.js sync
export NODE_LLAMA_CPP_SKIP_DOWNLOAD=true CCACHE_BASEDIR="$PWD"
export NODE_LLAMA_CPP_CMAKE_OPTION_KEEPKV=ON
if command -v ccache >/dev/null; then
    export NODE_LLAMA_CPP_CMAKE_OPTION_CMAKE_C_COMPILER_LAUNCHER=ccache
    export NODE_LLAMA_CPP_CMAKE_OPTION_CMAKE_CXX_COMPILER_LAUNCHER=ccache
fi
exec node node_modules/node-llama-cpp/dist/cli/cli.js source build --gpu "${KEEPKV_GPU:-false}" --noUsageExample
