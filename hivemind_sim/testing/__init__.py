"""Property testing over simulated swarms: ``driver`` (SwarmDriver), ``invariants``, ``replay``
(failures as scenario files), ``stateful`` (a hypothesis state machine base) and ``plugin`` (the
pytest plugin). See docs/property-testing.md.

Nothing is imported here: the pytest plugin loads this package in every pytest session, and
must not need the simulator's extras until a fixture is used.
"""
