"""The control service: payments into credit, credit into signed commands, for every kit.

Subpackages, from the edges down (the layers import-linter checks): ``api`` and ``cli``
(HTTP and the terminal), ``scheduler``, ``support`` and ``fleet``, ``payments`` and
``security``, ``runtime``, ``commands`` and ``gateways``, ``ledger``. docs/architecture.md
draws the flows through them.
"""
