"""HTTP/2 (RFC 9113) on the ``h2`` library: one connection class, one stream class.

``support.py`` decides which connections speak it (ALPN over TLS, the connection
preface in cleartext); ``connection.py`` drives h2 for one connection and polices it
(``guard.py``); ``request.py`` checks a request's header block; each stream runs the
same ``RequestCycle`` as HTTP/1.1 through ``stream.py``.
"""
