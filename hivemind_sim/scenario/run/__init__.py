"""Running a scenario in the simulator: its peers, their training, the fault timeline, the
scripted operations, the runner that measures it all, and sweeps of many runs."""
