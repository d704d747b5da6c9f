"""The local development stack: demo, sample data and the service processes on loopback.

``promptune demo``, the tests and the README's library example use it; the service itself (``app``,
``worker``) never imports it.
"""
