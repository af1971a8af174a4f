"""The shared core: settings, clock, the kit contract, server launchers, logging.

Every other package may import it; it imports none of them (import-linter checks).
"""
