"""kubellm's shared inference server: seed-compatible /ask, OpenAI-compatible API, probes and metrics."""
