"""Meter transports through NB-IoT carrier platforms' northbound APIs (CTWing first)."""
