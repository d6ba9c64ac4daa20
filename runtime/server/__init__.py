"""An OpenAI-compatible HTTP server over one package: the engine (engine.py), text (text.py), the routes (app.py)."""
