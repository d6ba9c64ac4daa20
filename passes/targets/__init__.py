"""Targets: one folder each (its hw schema, compile pass and program layout); specializations.py is shared."""
