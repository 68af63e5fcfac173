"""Scenarios: an experiment described in one YAML file, run in simulation, summed up in a report.

`units` (quantities and distributions), `schema` (the typed format), `loader` (files, overrides
and precise errors); the run, its metrics, assertions and report live beside them. Import from
the submodules: this package imports nothing, so that loading one part stays cheap.
"""
