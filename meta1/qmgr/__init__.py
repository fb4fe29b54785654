"""qmgr, the queue manager: owns all envelope state. ``daemon`` runs the IBDB group
commit and replay; scheduling comes with the delivery path. See spec/receive-path.md."""
