# The service image: every role, chosen with `billing serve --roles ...` (docker-compose.yml).
# Two stages: the first builds the wheel (schemas and migrations inside it, billing/resources.py),
# the second installs that wheel, non-editable, with the dependency versions of constraints.txt;
# no source tree in the final image.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY billing billing
COPY consumers consumers
COPY producers producers
COPY schemas schemas
COPY migrations migrations
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
COPY constraints.txt /tmp/constraints.txt
COPY --from=build /wheels /tmp/wheels
RUN pip install --no-cache-dir -c /tmp/constraints.txt /tmp/wheels/billing_service-*.whl \
    && rm -rf /tmp/wheels /tmp/constraints.txt \
    && useradd --system --uid 10001 --no-create-home billing
USER billing
ENV BILLING_GRPC_HOST=0.0.0.0 BILLING_HTTP_HOST=0.0.0.0 \
    PYTHONUNBUFFERED=1
EXPOSE 50051 8080
# Liveness only: an orchestrator restarts a process that stopped answering; readiness
# (/readyz) decides whether it gets traffic.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz')"
# Alone (`docker run`), apply migrations and create topics first; compose runs `migrate` once instead.
CMD ["billing", "serve", "--setup"]
