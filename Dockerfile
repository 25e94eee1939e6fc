# One image for every process; docker-compose.yml picks the command.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY scoreboard scoreboard
COPY ingest ingest
COPY workers workers
COPY broadcaster broadcaster
COPY lua lua
COPY sql sql
RUN pip install --no-cache-dir .
# lua/ and sql/ are read from the source tree, which stays the import root.
ENV PYTHONPATH=/app
EXPOSE 8000 8001
