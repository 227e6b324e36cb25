"""
AMP command definitions, one module per direction.

 - L{clientcommands}: application to volumecap server.
 - L{servercommands}: volumecap server to master.
 - L{mastercommands}: master to volumecap server.
 - L{admincommands}: the C{volumecap} command to master.

Amounts travel as decimal strings.  Instants travel as integer epoch seconds
between processes, and as ISO 8601 strings to and from the C{volumecap}
command, which shows them to people.
"""
