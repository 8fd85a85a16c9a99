"""kubellm's operator: the LLMService API, its pure manifest renderer, the Kopf handlers and the CLI."""
