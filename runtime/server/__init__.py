"""An OpenAI-compatible HTTP server over one package: the routes (app.py, completions.py), the engine (engine.py), text (text.py)."""
