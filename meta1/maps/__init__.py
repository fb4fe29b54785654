"""Maps: the keyed tables smar looks things up in (reference meta1.md §2.4, §2.5).

``base`` (what a lookup answers; lookup plans), ``keys`` (lookup orders). The map types
(hash files built by ``meta1 createmap``, regex, passwd, socket maps, sequences, inline
lists) and their driver come with them; ``spec/maps.md`` describes the whole.
"""
