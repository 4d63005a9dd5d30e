"""Spectral index catalogue, regional calendars, window features and terrain correction."""
