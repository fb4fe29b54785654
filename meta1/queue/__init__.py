"""Queue storage: the directory layout, the record container, content files (CDB), the
incoming log (IBDB) with replay and quarantine, and ``mailq``.

Modules: :mod:`.layout`, :mod:`.recordfile`, :mod:`.cdb`, :mod:`.ibdb`, :mod:`.mailq`,
:mod:`.timefmt`. spec/queue.md describes the formats and the decisions behind them.
"""
