"""smtps, the SMTP server: ``states`` (the session's transition table), ``commands`` (the
command table), ``session`` (the sans-I/O session) and ``daemon`` (sockets, content files,
the link to qmgr). See spec/receive-path.md."""
