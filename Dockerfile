# One image for every process; docker-compose.yml picks the command.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY scoreboard scoreboard
COPY ingest ingest
COPY workers workers
COPY broadcaster broadcaster
# scoreboard/lua_scripts and scoreboard/sql link to these: the wheel carries them.
COPY lua lua
COPY sql sql
RUN pip install --no-cache-dir .
EXPOSE 8000 8001
