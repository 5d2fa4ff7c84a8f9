FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY events events
COPY ledger ledger
COPY projections projections
COPY workers workers
RUN pip install --no-cache-dir .
CMD ["python", "-m", "workers"]
