"""Talking to a hub: endpoints, connect with retry and resume, subscribe, request/reply on /api; emit, tail, watch, bench. Imports only core."""
