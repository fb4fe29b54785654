"""Policy: the access map, delay_checks, relaying, DNSBL, greylisting and routing.

The pure cores smar (and smtps, for the per-session state) run to decide what to answer a
client and where mail goes (reference meta1.md §2.5–2.8; ``spec/policy.md``). None does
I/O, reads a clock or draws random numbers: map lookups are asked for one at a time as a
lookup plan (:mod:`meta1.maps.base`), DNS answers and the time are passed in.

===============  ====================================================================
``plan``         lookup plans as generators; the key sequence of one tag (B19, B26)
``rhs``          access-map right-hand sides, QUICK:, literal replies and macros (B46)
``access``       per-stage checks: cltaddr/cltname/cltresolve, from, to, protectedrcpt,
                 ``*_conf:`` configuration data (B17–B22, B33, B34, B48)
``relay``        local domains, relay grants, the relay rule (B41, B42, S8)
``route``        local users, aliases, mailertable → (mailer, host, address) (B31, B47, B63)
``dnsbl``        DNS block list names and verdicts (B45, T48, T49)
``greylist``     the greylisting machine and its store (B49)
``limits``       qmgr's per-IP limits, smtpc session options per server, and connection
                 admission (B56, D-POL-28)
``checks``       the plan of each SMTP stage as smar runs it
``states``       the session check machine: delay_checks as a table (B43–B46)
``session``      one session's decisions and replies (smtps side)
``settings``     the settings of the cores, from a loaded configuration
``sessionconf``  ``smtps_session_conf:``: smtps options per client, parsed and laid
                 over the smtps section (B33, B34, D-POL-26); ``smtpc_session_conf:``:
                 smtpc's reply timers per server, parsed (D-POL-28)
===============  ====================================================================
"""
