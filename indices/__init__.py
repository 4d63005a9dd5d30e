"""Spectral indices (a catalogue evaluated safely), flowering-window features, terrain.
"""
