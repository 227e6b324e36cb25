"""
AMP command definitions, one module per direction.

 - L{clientcommands}: application to volumecap server.
 - L{servercommands}: volumecap server to master.
 - L{mastercommands}: master to volumecap server.
 - L{admincommands}: the C{volumecap} command to master.

Amounts travel as decimal strings and instants as integer epoch seconds.
"""
