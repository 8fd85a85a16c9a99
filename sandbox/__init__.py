"""kubellm's local control plane: a Kubernetes API emulator and a sandbox that runs LLMServices as processes."""
