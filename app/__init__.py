"""Promptune service: FastAPI front end, database, storage, ingest and the CLI."""
