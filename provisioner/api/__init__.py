"""The HTTP API: parses requests, calls a use case, serializes the result. Nothing else."""
