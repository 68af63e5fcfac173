"""The scenario format: what a YAML scenario is and how it is read and validated.

Nothing here loads the simulator, so reading or checking a file stays cheap.
"""
