"""setuptools shim: metadata lives in setup.cfg.

Nothing is written into the programs at build time: the Python they run on is
found at install time (bin/stunnel3-python, whose `#!python` line the
installer rewrites to the Python it installs into).
"""

from setuptools import setup

setup()
