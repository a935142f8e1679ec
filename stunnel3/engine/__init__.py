"""The engine: what runs once stunnel's options are read (docs/architecture.md).

Start-up in SPEC section 2's order (service.py), the daemon, one session, the
plaintext end, TCP wrappers, IDENT, bounds, signals; with stunnel3/tls.py,
relay.py and chroot.py, which keep the names the design gives them. It never
imports a program module (tests/unit/test_import_graph.py). Imports nothing.
"""
