"""Scenarios: an experiment described in one YAML file, run in simulation, summed up in a report.

Three rooms: `format` (what a scenario file is: units, distributions, the schema, the loader
and the metric names it may use), `run` (executing it in the simulator: peers, training, events,
operations, the runner and sweeps of runs) and `results` (what a run observed and how it is
judged and shown: metrics, assertions, reports, plots, comparisons and sweep summaries). Import
from the submodules: these packages import nothing, so that loading one part stays cheap.
"""
