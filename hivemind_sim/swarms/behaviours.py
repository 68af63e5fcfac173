"""The names of what a hostile DHT peer does, in one place: the scenario schema reads them
(this module imports nothing, so reading a scenario loads no simulator) and ``hostile.py``
implements them."""

HOSTILE_BEHAVIOURS = (
    "foreign_endpoint",
    "unparsable_endpoint",
    "junk_contacts",
    "phantom_contacts",
    "phantom_values",
    "store_flood",
    "never_read",
)
FLOODS = frozenset({"store_flood", "never_read"})
"""Behaviours that send requests at a `rate`."""
