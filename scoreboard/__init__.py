"""Code shared by the ingest, workers and broadcaster processes.

Settings, Redis key names, the token formats, the Lua script registry, the
database pool and migrations, and the embedded Redis/Postgres used by the
default run and by the tests.
"""
