# syntax=docker/dockerfile:1
#
# m2m-proxy image: two stages.
#   build   – installs every dependency from the lockfile, compiles TypeScript and bundles it
#             (scripts/bundle.mjs), then drops the devDependencies so only production packages
#             are left to copy.
#   runtime – distroless Node.js 24: no shell, no package manager, runs as 65532 ("nonroot").
#             Nothing is written at run time, so it runs with readOnlyRootFilesystem: true.
#
# Build:  docker build -t m2m-proxy:dev .
# Run:    docker run --rm -v "$PWD/config:/etc/m2m-proxy:ro" -p 9090:9090 m2m-proxy:dev

FROM node:24-bookworm-slim AS build
WORKDIR /app
# Lockfile first: this layer (the slow one) is reused until a dependency changes. .npmrc holds
# legacy-peer-deps, with which the lockfile was made: without it npm ci refuses the lockfile.
COPY package.json package-lock.json .npmrc ./
# --ignore-scripts: no production dependency needs an install script, and tsc needs none either.
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY scripts/bundle.mjs ./scripts/bundle.mjs
COPY src ./src
RUN npm run build && npm prune --omit=dev --ignore-scripts --no-audit --no-fund

FROM gcr.io/distroless/nodejs24-debian12:nonroot AS runtime
LABEL org.opencontainers.image.title="m2m-proxy" \
      org.opencontainers.image.description="Sidecar reverse proxy: OAuth2 client-credentials token injection and request pacing" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/m2m-proxy/m2m-proxy" \
      org.opencontainers.image.documentation="https://github.com/m2m-proxy/m2m-proxy/blob/main/docs/kubernetes.md"
WORKDIR /app
ENV NODE_ENV=production \
    M2M_PROXY_CONFIG=/etc/m2m-proxy/m2m-proxy.yaml \
    MALLOC_ARENA_MAX=2 \
    MALLOC_TRIM_THRESHOLD_=131072
# MALLOC_ARENA_MAX: glibc keeps at most 2 malloc arenas instead of one per thread that allocates
# (node runs about 11 threads); ≈ 1 MiB less resident memory. MALLOC_TRIM_THRESHOLD_: glibc's
# default trim threshold, but fixed: otherwise glibc raises it after start-up frees its large
# buffers and keeps ≈ 0.5 MiB of freed memory. Both measured in docs/benchmarks.md.
# The bundle (dist/m2m-proxy.cjs) runs; node_modules holds what it loads at run time (undici,
# prom-client, and the packages of optional features); package.json gives the version.
COPY --from=build /app/package.json ./package.json
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist/m2m-proxy.cjs /app/dist/m2m-proxy.cjs.map ./dist/
COPY LICENSE ./LICENSE
# Numeric, so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 65532:65532
# 8080: the proxy (loopback by default); 9090: admin (/metrics /healthz /readyz).
EXPOSE 8080 9090
# No HEALTHCHECK: there is no shell or curl in the image; Kubernetes probes /healthz and /readyz.
# V8 flags that cut the idle resident memory (measured in docs/benchmarks.md, "Memory
# footprint"): a 1 MiB young-generation semi-space instead of letting it grow to 8 MiB after
# start-up; WebAssembly (undici's HTTP parser) compiled by the baseline compiler only; the
# optimising compilers (Maglev, TurboFan, and their on-stack replacement) only for code run
# 30,000 times, not 400 or 3,000, so that start-up (which makes Node's module and path code hot)
# does not bring in their code pages; and no Sparkplug baseline code. The request path still
# reaches Maglev and TurboFan within seconds under load. All are command-line flags: V8 flags
# such as --liftoff-only are not accepted in NODE_OPTIONS.
ENTRYPOINT ["/nodejs/bin/node", "--max-semi-space-size=1", "--liftoff-only", "--invocation-count-for-maglev=30000", "--invocation-count-for-maglev-osr=30000", "--invocation-count-for-osr=30000", "--invocation-count-for-turbofan=30000", "--no-sparkplug", "dist/m2m-proxy.cjs"]
