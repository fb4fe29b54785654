"""Inter-daemon records: the typed record codec (:mod:`.codec`) and the record types (:mod:`.records`).

Sans-I/O: nothing here touches a socket or a file; the daemons feed bytes in and write
the bytes that come out.
"""
