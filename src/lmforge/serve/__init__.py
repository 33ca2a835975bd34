"""`lmforge serve MODEL`: an HTTP server (FastAPI + uvicorn, the `serve` extra) for one model folder.

    options.py     ServeOptions (the CLI flags)
    kinds.py       which task a folder is (its architectures) and the endpoints of each task
    schemas.py     request bodies (pydantic, strict)
    encoders.py    classify / fill-mask / token-classify / embeddings: checks, batch keys, response shapes
    batcher.py     MicroBatcher: concurrent requests coalesced into one forward pass
    middleware.py  Guard: metrics timing, API key, body-size limit
    metrics.py     Prometheus text
    errors.py      JSON errors (4xx for every bad request)
    app.py         create_app(options) and serve(options)

fastapi and uvicorn are imported by app.py only, so the rest of lmforge runs without them.
"""
