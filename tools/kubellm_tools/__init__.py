"""kubellm's tools: the inference benchmark and the tiny random-model builder. They drive the server and build test
models; neither is part of a product image."""
