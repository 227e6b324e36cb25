"""
The volumecap server: holdings, the master link, the application protocol
and the C{twistd volumecap-server} service tree.
"""
