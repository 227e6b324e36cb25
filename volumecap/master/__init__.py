"""
The master: the meta, interval and local handlers, the ledger they share and
the C{twistd volumecap-master} service tree.
"""
