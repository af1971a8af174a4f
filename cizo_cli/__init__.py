"""The composition: the ``cizo`` command and ``cizo up``, on top of every package.

Nothing imports this package; it imports the others to wire processes together (the local
stack, the bridge, the control service, the simulators, each package's own subcommands).
"""
