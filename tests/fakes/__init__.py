"""Fake servers of the destinations and devices fieldbridge talks to, for tests only."""
