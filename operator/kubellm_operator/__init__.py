"""kubellm's operator: the LLMService API and CRD, the pure manifest renderer, and the Kopf operator.

`kubellm operator` runs it; `kubellm render` and `kubellm crd` (offline.py) show what it would create.
"""
