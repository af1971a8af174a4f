"""Shared core of the CIZO kit backend: settings, clock, the kit contract and the CLI."""
