"""The server's routers, one per concern: the seed API, the OpenAI API, health probes and metrics."""
