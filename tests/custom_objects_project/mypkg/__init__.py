"""A user's project package (local source, not installed)."""
