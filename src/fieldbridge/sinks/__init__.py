"""Sinks: one task per configured destination, each after its own cursor."""
