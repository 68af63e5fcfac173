"""The simulated world: the virtual-time loop, the network model, the simulated transport,
topologies and the trace digest. Nothing here knows about the DHT or experts."""
