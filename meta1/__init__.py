"""meta1 — a Python reference implementation of the MeTA1 mail transfer agent.

Five cooperating daemons (mcp, smtps, qmgr, smtpc, smar) configured from one file in
MeTA1's BIND-like configuration language. See ``../shared/DESIGN.md`` for the
architecture and ``spec/`` for the generated tables and the decisions taken where MeTA1
itself is unknown.
"""

__version__ = "0.1.0"
