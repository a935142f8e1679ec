"""setuptools shim: metadata lives in setup.cfg.

The one thing done here is to write the interpreter that runs pip into the
POSIX-sh fronts in bin/ (the @PYTHON@ placeholder), so that `stunnel` starts
the Python that has pyOpenSSL installed, whatever PATH tcpserver passes on.
"""

import os
import sys

from setuptools import setup

try:
    from setuptools.command.build_scripts import build_scripts
except ImportError:  # setuptools without its own build_scripts: the distutils one
    from distutils.command.build_scripts import build_scripts


class BuildFronts(build_scripts):
    def run(self):
        super().run()
        for script in self.scripts or ():
            path = os.path.join(self.build_dir, os.path.basename(script))
            with open(path, encoding="utf-8") as front:
                text = front.read()
            if "@PYTHON@" in text:
                with open(path, "w", encoding="utf-8") as front:
                    front.write(text.replace("@PYTHON@", sys.executable))


setup(cmdclass={"build_scripts": BuildFronts})
