# keepkv for CPU: the server, its dashboard and llama.cpp built with the KeepKV patches.
#
#   docker-compose up -d --build          (see docs/deploy.md)
#   docker build -t keepkv:cpu . && docker run -p 8080:8080 -v "$PWD/models:/models:ro" keepkv:cpu
#
# llama.cpp is compiled for the CPU of the machine that builds the image (GGML_NATIVE, like
# ./scripts/setup.sh), so build the image where it runs. On a machine with other CPU flags the entrypoint
# rebuilds it once at startup (about 9 minutes on 2 cores) into the llama-builds volume.
FROM node:20-bookworm-slim

ENV DEBIAN_FRONTEND=noninteractive
# cmake, g++, git: the llama.cpp build; g++ also stays because the build key names the compiler
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake g++ make git ca-certificates ccache \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY package.json package-lock.json ./
# --ignore-scripts: node-llama-cpp's postinstall would download or build a vanilla llama.cpp; the
# patched one is built below (offline, from the llama.cpp bundle inside node-llama-cpp)
RUN npm ci --ignore-scripts --no-audit --no-fund

# llama.cpp with the KeepKV patches, in a layer of its own: it depends only on the patches and the
# build script, so changes to the server do not rebuild it
COPY patches ./patches
COPY scripts/build-llama.ts ./scripts/
COPY scripts/lib ./scripts/lib
COPY lib ./lib
RUN npx tsc --ignoreConfig --module nodenext --moduleResolution nodenext --target es2022 --skipLibCheck --types node \
        --outDir dist --rootDir . scripts/build-llama.ts \
    && node dist/scripts/build-llama.js \
    && rm -rf node_modules/node-llama-cpp/llama/llama.cpp/.git /root/.cache

# the server and its dashboard
COPY . .
RUN npx tsc -p . \
    && npm prune --omit=dev --ignore-scripts --no-audit --no-fund \
    && rm -rf /root/.npm \
    && mkdir -p /models /var/cache/keepkv \
    && chown -R node:node /var/cache/keepkv node_modules/node-llama-cpp

COPY deploy/docker-entrypoint.sh /usr/local/bin/keepkv-entrypoint
USER node
ENV NODE_ENV=production \
    KEEPKV_HOST=0.0.0.0 \
    KEEPKV_PORT=8080 \
    KEEPKV_MODELS_DIR=/models \
    KEEPKV_MODEL=SmolLM2-135M-Instruct.Q4_1.gguf \
    KEEPKV_BUILD_CACHE=/var/cache/keepkv
EXPOSE 8080
VOLUME ["/models"]
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["node", "-e", "fetch('http://127.0.0.1:'+(process.env.KEEPKV_PORT||8080)+'/health').then((r)=>process.exit(r.ok?0:1),()=>process.exit(1))"]
ENTRYPOINT ["/usr/local/bin/keepkv-entrypoint"]
