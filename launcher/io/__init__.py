"""Threads and file descriptors: the only place the launcher keeps them (style anchor 5)."""
