"""Offline pages and workbooks: the circuit trace with its three HTML reports, the atlas, causal and sweep
pages, and their templates (package data)."""
