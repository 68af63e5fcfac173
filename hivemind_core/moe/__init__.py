"""Experts and the Decentralized Mixture-of-Experts layer."""
