"""What every group shares, light because most of it runs on every connection.

Records, C getopt, the soft limits given back, bin/'s front rules, the process
title, modules loaded on first use. Imports nothing of ours outside support/
(tests/unit/test_import_graph.py), and nothing itself.
"""
