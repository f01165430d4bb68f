"""Examples that run as code, not only as prose (`examples.trainer`)."""
