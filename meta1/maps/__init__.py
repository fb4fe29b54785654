"""Maps: the keyed tables smar looks things up in (reference meta1.md §2.4, §2.5).

``base`` (what a lookup answers; lookup plans), ``keys`` (lookup orders); ``source``
(the ``key value`` text form), ``hashfile`` (the hash map file format), ``createmap``
(``meta1 createmap``), ``local`` (hash, regex, passwd and inline maps), ``sockmap`` and
``states`` (the socket-map protocol and connection machine, sans I/O), ``sockclient``
(the socket-map client's connection pool on the event loop), ``driver`` (sequences,
``open_maps``, ``MapDriver``, ``BlockingDriver``). ``spec/maps.md`` describes the whole.
"""
