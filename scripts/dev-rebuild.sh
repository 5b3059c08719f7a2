#!/usr/bin/env bash
# Developer loop for the patch series: copy .work/ (npm run patches:checkout) into node_modules and rebuild
# in place with ccache (seconds for a one-file change), with the recorded build's CMake options (the same build
# folder). The result is not cached and the manifest is not
# updated: export the series (npm run patches:export) and run npm run build:llama for a real build.
# The loader refuses a build rebuilt in place unless KEEPKV_ALLOW_DEV_BUILD=1 is set; npm run build:llama
# sees that it is not the recorded build and puts the recorded one back.
set -euo pipefail
cd "$(dirname "$0")/.."
node dist/scripts/patches.js sync
export NODE_LLAMA_CPP_SKIP_DOWNLOAD=true CCACHE_BASEDIR="$PWD"
# the recorded build's CMake options (KEEPKV, ccache, the CPU's instruction sets): the same build folder
manifest=node_modules/node-llama-cpp/llama/keepkv-build.json
if [ ! -f "$manifest" ]; then
    echo "[keepkv dev] no recorded build: run npm run build:llama first" >&2
    exit 1
fi
eval "$(node -e '
const m = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
for (const [k, v] of Object.entries(m.cmakeOptions)) console.log(`export NODE_LLAMA_CPP_CMAKE_OPTION_${k}=${JSON.stringify(v)}`);
console.log(`gpu=${JSON.stringify(m.gpu === false ? "false" : m.gpu)}`);
' "$manifest")"
node node_modules/node-llama-cpp/dist/cli/cli.js source build --gpu "$gpu" --noUsageExample
echo "[keepkv dev] rebuilt in place: run with KEEPKV_ALLOW_DEV_BUILD=1; npm run build:llama puts the recorded build back" >&2
