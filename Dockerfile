# One image for `tocsin serve` (API, webhooks, dashboard, worker) and `tocsin worker`.
# Build: docker build -t tocsin .   Configuration: /etc/tocsin/tocsin.yaml (TOCSIN_CONFIG);
# secrets only from the environment.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TOCSIN_CONFIG=/etc/tocsin/tocsin.yaml

WORKDIR /app
COPY pyproject.toml README.md ./
COPY bot ./bot
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /var/lib/tocsin --create-home tocsin

USER tocsin
WORKDIR /var/lib/tocsin
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/readyz', timeout=2)"]
ENTRYPOINT ["tocsin"]
CMD ["serve"]
