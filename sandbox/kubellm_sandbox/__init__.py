"""kubellm's local sandbox: LLMServices served as local processes behind the real operator, on this machine.

`kubellm sandbox up|down|status` and `kubellm demo`; it runs on the API emulator (`kubellm_emulator`).
"""
