"""smar, the address resolver: DNS lookups that never block, and (later) the maps.

Modules
    ``states``      the nameserver exchange machine: its states, inputs and one table;
    ``exchange``    :class:`~meta1.smar.exchange.ExchangePlan`, one question asked of the
                    configured nameservers (UDP, TCP on truncation, timeouts, fallback);
    ``plans``       the lookup plans built on answers: MX with A/AAAA per exchanger
                    (implicit MX, null MX, CNAME chains, B60, B61), addresses, PTR, TXT;
    ``cache``       a bounded TTL cache of answers, positive and negative;
    ``nameservers`` smar's configuration (``nameserver``, ``DNS_timeout``,
                    ``use_resolvconf``) turned into a nameserver list, or a clear error (B62);
    ``resolver``    the thin I/O driver on meta1's event loop that runs the plans.

Everything but ``resolver`` is sans-I/O: messages and outcomes in, questions and
datagrams out, ``now`` and randomness passed in. ``spec/smar.md`` is the prose and lists
the decisions (D-SMAR-n) where MeTA1 is silent.
"""
