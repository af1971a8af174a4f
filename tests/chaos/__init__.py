"""The chaos month (docs/chaos.md): the whole platform in processes that a seeded schedule
SIGKILLs and restarts, and the checks that nothing was lost, doubled or left unconverged.
One implementation for ``bench/chaos.py`` and ``tests/test_chaos.py``."""
