"""What every daemon process shares: ``link`` (the inter-daemon record connection) and
``process`` (logging, exit codes, the host name)."""
