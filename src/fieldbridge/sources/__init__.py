"""Sources: each owns a transport and hands raw payloads to ingest."""
