"""stunnel3-setup (bin/stunnel3-setup runs service.main): administration, by hand.

Never loaded by a session, nor preloaded by the warm helper. Imports nothing.
"""
