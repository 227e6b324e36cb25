"""
volumecap: distributed volume caps served from in-memory escrow slices.

A master per data center owns the undistributed part of every cap interval.
Volumecap servers hold slices of it and serve applications' ``consume`` calls
locally; see L{volumecap.client} for the application side.
"""

__version__ = "0.1.0"
