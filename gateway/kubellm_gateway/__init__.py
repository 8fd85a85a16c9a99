"""kubellm's gateway: one OpenAI endpoint for every served LLMService, with holding and scale from zero."""

__version__ = "0.1.0"
