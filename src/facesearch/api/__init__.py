"""The HTTP API and web service (FastAPI): thin routes over the use-case services."""
