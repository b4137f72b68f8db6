"""Reference device actors built on the runtime."""
