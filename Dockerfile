# mlproxy: MLflow served through Jupyter's port (/mlflow/), behind Jupyter's token, supervised.
#
#   docker build -t mlproxy .                  (podman: podman build --format docker -t mlproxy .)
#   docker run -d --name mlproxy -p 8888:8888 -v mlproxy:/var/lib/mlproxy mlproxy
#   docker logs mlproxy                         (a generated token is printed there, once)
#
# docs/container.md has the token options, the volume, the healthcheck and the image size.
# Builds with BuildKit, the legacy builder and podman/buildah alike (no RUN --mount).

ARG BASE=python:3.11-slim-bookworm

# ---- requirements: mlproxy's runtime dependencies, read from pyproject.toml
# A stage of its own so that editing pyproject.toml elsewhere (version, tool settings) leaves
# the dependency layer below cached: only a changed list invalidates it.
FROM ${BASE} AS requirements
WORKDIR /src
COPY pyproject.toml ./
RUN python3 -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['postgres']))" > requirements.txt

# ---- build: a virtualenv with the exact versions mlproxy is tested with, and mlproxy's wheel
FROM ${BASE} AS build
# python:3.11-slim has ensurepip; Debian's python3 needs python3-venv for it, and
# ca-certificates so that its pip trusts the system's CAs. Neither reaches the final image.
# DL3008 (pin apt versions): these come from the base's own Debian release, whose tag is the
# pin; exact Debian versions would stop resolving at the next point or security release.
# hadolint ignore=DL3008
RUN python3 -m venv /opt/mlproxy > /dev/null 2>&1 \
 || { apt-get update \
      && apt-get install -y --no-install-recommends python3-venv ca-certificates \
      && python3 -m venv --clear /opt/mlproxy; }
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY --from=requirements /src/requirements.txt ./
COPY constraints.txt ./
RUN /opt/mlproxy/bin/pip install -c constraints.txt -r requirements.txt
# mlproxy itself is built as a wheel and installed in the final stage, so a source change
# rebuilds a few kilobytes instead of copying the whole virtualenv again.
COPY . .
RUN /opt/mlproxy/bin/pip wheel --no-deps --wheel-dir /wheels .

# ---- runtime: the same base, the virtualenv, tini; no compilers, no pip or apt caches
FROM ${BASE}
# DL3008: as above (tini and ca-certificates from the base's Debian release).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini ca-certificates \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 1000 --user-group --create-home --home-dir /home/mlproxy --shell /bin/bash mlproxy \
 && install -d -o mlproxy -g mlproxy -m 0750 /var/lib/mlproxy \
 && install -d -o mlproxy -g mlproxy -m 0700 /run/mlproxy
COPY --from=build /opt/mlproxy /opt/mlproxy
COPY --from=build /wheels /tmp/wheels
RUN /opt/mlproxy/bin/pip install --no-cache-dir --no-deps --no-index /tmp/wheels/mlproxy-*.whl \
 && /opt/mlproxy/bin/pip check \
 && rm -rf /tmp/wheels

# Container mode: supervisord and every program log to stdout; Jupyter listens on all
# interfaces; MLflow keeps its loopback-only address (the config refuses anything else).
# The runtime directory (supervisord's socket, the status document, Jupyter's copy of the
# token) lives and dies with the container, outside the volume.
ENV PATH=/opt/mlproxy/bin:$PATH \
    HOME=/home/mlproxy \
    SHELL=/bin/bash \
    LANG=C.UTF-8 \
    MLPROXY_STATE_DIR=/var/lib/mlproxy \
    MLPROXY_RUNTIME_DIR=/run/mlproxy \
    MLPROXY_LOG_TARGET=stdout \
    MLPROXY_JUPYTER__IP=0.0.0.0
# Runs and artifacts (SQLite store, artifact directory), notebooks and the token.
VOLUME ["/var/lib/mlproxy"]
# Numeric, so that Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 1000:1000
WORKDIR /home/mlproxy
EXPOSE 8888
# Healthy only when the agent reports "ready", which needs the route users take (/mlflow/ and
# /proxy/5001/ through Jupyter, with the token) to answer, not just live processes.
# `mlproxy status` exits 1 (starting, degraded) or 2 (down); Docker reserves 2, hence `|| exit 1`.
HEALTHCHECK --interval=15s --timeout=10s --start-period=60s --retries=3 \
  CMD ["/bin/sh", "-c", "mlproxy status || exit 1"]
# tini is PID 1: it passes SIGTERM to `mlproxy up`, which stops Jupyter, then MLflow, and exits
# 0. `mlproxy up` is a child subreaper, so it (not tini) collects orphans of the stack.
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["mlproxy", "up"]
