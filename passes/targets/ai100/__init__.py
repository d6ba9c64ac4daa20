"""Qualcomm Cloud AI 100: SDK discovery, compile plan, compiler process, QPC package layout."""
