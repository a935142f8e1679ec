"""on_demand.py: a deferred module costs nothing until used, then is the module itself."""

import subprocess
import sys

CODE = """
import sys
from stunnel3.support import on_demand
on_demand.defer("xml.dom.minidom")
import xml.dom.minidom as early  # binds the stand-in: nothing is executed yet
from xml.dom import minidom
assert minidom is early and on_demand.deferred("xml.dom.minidom")
assert "xml.dom.minicompat" not in sys.modules  # minidom's own import, not run yet
document = early.parseString("<a/>")  # first use: the real module runs now
assert not on_demand.deferred("xml.dom.minidom")
assert "xml.dom.minicompat" in sys.modules and document.documentElement.tagName == "a"
assert early.Document is sys.modules["xml.dom.minidom"].Document  # the stand-in has it all
on_demand.defer("os")  # a module loaded already stays as it is
assert not on_demand.deferred("os") and sys.modules["os"].getpid
on_demand.provide("xml.dom.pulldom", START_ELEMENT="ready")
from xml.dom.pulldom import START_ELEMENT  # provided: still nothing executed
assert START_ELEMENT == "ready" and on_demand.deferred("xml.dom.pulldom")
from xml.dom.pulldom import parseString  # any other name: the real module
assert not on_demand.deferred("xml.dom.pulldom")
assert sys.modules["xml.dom.pulldom"].START_ELEMENT == "START_ELEMENT" and parseString
print("ok")
"""


def test_a_deferred_module_runs_at_its_first_use():
    done = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=60)
    assert done.stdout == "ok\n", done.stderr
