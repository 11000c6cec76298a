"""cffi bindings built against the system's own linux/*.h headers."""
