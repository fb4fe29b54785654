"""smtpc: the SMTP/LMTP client daemon's pure cores.

* :mod:`meta1.smtpc.states` -- the session machine's states, inputs and transition table;
* :mod:`meta1.smtpc.session` -- one client session, sans-I/O (bytes and events in,
  effects out), with per-recipient results for qmgr;
* :mod:`meta1.smtpc.plan` -- which server address to try next (MX preference, random
  order among equals, fallback and its bounds).

spec/smtpc.md describes the machines and the decisions (D-SMTPC-n) they implement.
"""
