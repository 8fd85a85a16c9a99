"""What every kubellm component shares: the `kubellm` command, the server's settings contract, quantities, time.

Light on purpose (pydantic only): the operator, the inference server and the emulator all import it.
"""
