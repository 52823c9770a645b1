"""Fault injection against a running site, with figures: `relevent chaos TOPOLOGY`."""
