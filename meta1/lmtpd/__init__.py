"""lmtpd, meta1's local delivery agent: an LMTP server (RFC 2033) that stores mail in Maildirs.

Modules
    ``states``    the session's transition table;
    ``commands``  the command table (LHLO, MAIL, RCPT, DATA, RSET, NOOP, VRFY, QUIT);
    ``mailbox``   which mailbox a recipient has, and the request/outcome values;
    ``session``   the sans-I/O LMTP session;
    ``maildir``   the durable Maildir write (blocking: run in a worker thread);
    ``daemon``    the UNIX listener, sessions, workers, signals.

See spec/lmtpd.md; the decisions where RFC 2033 and the Maildir convention leave a
choice are D-LMTPD-n there.
"""
