"""Reusable API clients: the OAuth token manager, the DUNE DB client."""
