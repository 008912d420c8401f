"""Shared by the hub and its clients, with no I/O of their own: the envelope and catalogue, wire framing, errors and exit codes, the origin and token policy, run state."""
