"""kubellm's shared inference server: seed-compatible /ask, OpenAI-compatible API, probes and metrics.

`kubellm serve` runs it in every pod the operator renders; its settings contract is `kubellm.contract`.
"""
