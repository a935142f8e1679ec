"""stunnel3: a drop-in replacement for stunnel 3.22 (sg2), makesock and fixcrio.

This module holds the version only and imports nothing: fixcrio and makesock
start on every connection and must never pay for OpenSSL.
"""

__version__ = "0.1.0"
