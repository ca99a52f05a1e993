# syntax=docker/dockerfile:1.7
# chargecast service image: numpy + Starlette/uvicorn only (no scikit-learn, pandas or pyarrow).
# Build:  docker build -t chargecast .   (behind a TLS-intercepting proxy add
#         --secret id=ca,src=/etc/ssl/certs/ca-certificates.crt)
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
WORKDIR /src
COPY requirements/serve.lock requirements/build.lock requirements/sbom.lock requirements/
# Three venvs: the app's (copied into the image), and two build-stage tool venvs (wheel building,
# and cyclonedx-py for the SBOM) that never reach it.
RUN --mount=type=secret,id=ca \
    if [ -f /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi; \
    python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check --require-hashes -r requirements/serve.lock \
    && python3 -m venv /opt/build \
    && /opt/build/bin/pip install --no-cache-dir --disable-pip-version-check --require-hashes -r requirements/build.lock \
    && python3 -m venv /opt/sbom \
    && /opt/sbom/bin/pip install --no-cache-dir --disable-pip-version-check --require-hashes -r requirements/sbom.lock
COPY pyproject.toml README.md ./
COPY src/ src/
RUN /opt/build/bin/pip wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir /wheels . \
    && /opt/venv/bin/pip install --no-cache-dir --no-deps /wheels/*.whl \
    && /opt/venv/bin/pip uninstall --yes --quiet pip setuptools \
    && find /opt/venv/lib -type d -name tests -path '*/numpy/*' -prune -exec rm -rf {} + \
    && /opt/sbom/bin/cyclonedx-py environment --pyproject pyproject.toml --output-reproducible \
       --output-format JSON --output-file /sbom.cdx.json /opt/venv \
    && python3 -m compileall -q /opt/venv/lib

FROM ${BASE_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="chargecast" \
      org.opencontainers.image.description="Forecast a patient's medical charges with a calibrated interval and an explanation" \
      org.opencontainers.image.source="https://github.com/chargecast/chargecast" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
COPY --from=build /opt/venv /opt/venv
# The CycloneDX SBOM of /opt/venv exactly as shipped (after pip and setuptools are removed);
# docs/supply-chain.md says how it is made and checked.
COPY --from=build /sbom.cdx.json /app/sbom.cdx.json
COPY models/current /app/models/current
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CHARGECAST_MODEL_DIR=/app/models/current \
    CHARGECAST_HOST=0.0.0.0 \
    CHARGECAST_PORT=8080 \
    CHARGECAST_METRICS_PORT=9090
WORKDIR /app
USER 10001:10001
EXPOSE 8080 9090
# Readiness, not mere liveness: healthy means the verified model answers. Python, not curl: the
# official slim image has no curl. 9090 is /metrics, for operators (publish it only to them).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('CHARGECAST_PORT', '8080'), timeout=2)"]
# The server is PID 1 and handles SIGTERM itself: it stops accepting, drains, exits.
ENTRYPOINT ["chargecast", "serve"]
