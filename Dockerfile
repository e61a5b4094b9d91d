FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY billing billing
COPY consumers consumers
COPY producers producers
COPY schemas schemas
COPY migrations migrations
RUN pip install --no-cache-dir .
ENV BILLING_GRPC_HOST=0.0.0.0 BILLING_HTTP_HOST=0.0.0.0 \
    BILLING_MIGRATIONS_DIR=/app/migrations
EXPOSE 50051 8080
CMD ["billing", "serve", "--setup"]
