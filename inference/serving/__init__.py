"""`deferral serve`: speculative cascades behind an OpenAI-compatible HTTP endpoint.

requests.py parses and checks request bodies (pure), text.py turns growing token lists into text
deltas with stop strings (pure), engine.py decodes requests in batched cohorts on one thread, app.py
holds the HTTP routes, and inference/serve_cli.py the command line. See docs/serve.md.
"""
