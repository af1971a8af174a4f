"""Control service: ledger, credit, commands, HTTP API and scheduler."""
