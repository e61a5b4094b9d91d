# The service image: every role, chosen with `billing serve --roles ...` (docker-compose.yml).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY billing billing
COPY consumers consumers
COPY producers producers
COPY schemas schemas
COPY migrations migrations
# Editable: the code stays in /app, next to schemas/ and migrations/ that it reads at run time
# (billing.codec finds schemas/avro relative to the package).
RUN pip install --no-cache-dir -e . \
    && useradd --system --uid 10001 --no-create-home billing
USER billing
ENV BILLING_GRPC_HOST=0.0.0.0 BILLING_HTTP_HOST=0.0.0.0 \
    BILLING_MIGRATIONS_DIR=/app/migrations \
    PYTHONUNBUFFERED=1
EXPOSE 50051 8080
# Liveness only: an orchestrator restarts a process that stopped answering; readiness
# (/readyz) decides whether it gets traffic.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz')"
# Alone (`docker run`), apply migrations and create topics first; compose runs `migrate` once instead.
CMD ["billing", "serve", "--setup"]
