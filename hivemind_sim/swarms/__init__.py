"""Swarms: the unmodified core run in the simulated world (churn, DHT and DMoE swarms, the
baton that serializes trainer threads, the compute model) or in real processes."""
