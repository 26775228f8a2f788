"""The HTTP server: ingest endpoint, health, metrics (and later the REST API and console)."""
