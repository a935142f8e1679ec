"""The sans-I/O protocol layers: bytes in, actions out (protocol.py); no sockets, no TLS.

line_proxy.py is the skeleton every STARTTLS layer shares; imap.py and pop3.py are
layers of their own, SMTP's parts (smtp_*.py) serve stunnel3/smtp.py. They import
no I/O, and of ours only each other and support/record.py
(tests/unit/test_sans_io.py). Imports nothing: a layer is loaded by name.
"""
