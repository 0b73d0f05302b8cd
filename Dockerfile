# One image for `tocsin serve` (API, webhooks, dashboard, worker) and `tocsin worker`.
# Build: docker build -t tocsin .   Configuration: /etc/tocsin/tocsin.yaml (TOCSIN_CONFIG);
# secrets only from the environment. `docker run --rm tocsin check` checks a deployment.
#
# Stage 1 builds the wheel from the files below (templates, migrations and web assets go
# inside it); stage 2 installs the locked runtime dependencies (hashes checked), then the wheel
# alone, and runs as a non-root user. tests/test_image.py rehearses both stages without Docker.

FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY requirements/build.txt ./requirements/build.txt
RUN pip install --require-hashes -r requirements/build.txt
COPY pyproject.toml setup.py MANIFEST.in README.md ./
COPY bot ./bot
COPY message_templates ./message_templates
RUN pip wheel --no-deps --no-build-isolation --wheel-dir /dist .

FROM python:3.11-slim-bookworm AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TOCSIN_CONFIG=/etc/tocsin/tocsin.yaml
COPY requirements/runtime.txt /tmp/requirements.txt
COPY --from=build /dist/ /tmp/dist/
RUN pip install --require-hashes -r /tmp/requirements.txt \
    && pip install --no-deps /tmp/dist/*.whl \
    && rm -rf /tmp/requirements.txt /tmp/dist \
    && useradd --system --uid 10001 --home-dir /var/lib/tocsin --create-home tocsin

USER tocsin
WORKDIR /var/lib/tocsin
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/readyz', timeout=2)"]
ENTRYPOINT ["tocsin"]
CMD ["serve"]
