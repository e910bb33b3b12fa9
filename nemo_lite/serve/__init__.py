"""``nemo-lite serve``: an OpenAI-compatible HTTP server for one model in one process (the ``[serve]`` extra).

Layout: :mod:`.engine` is the only module that touches the model; :mod:`.scheduler` batches work across requests on
one model worker thread; :mod:`.app` holds the HTTP routes (the only async code), :mod:`.uploads` reads request
bodies with a size limit, :mod:`.formats` writes OpenAI's shapes, :mod:`.metrics` the Prometheus metrics;
:mod:`.server` runs it all under uvicorn. ``page.html`` is the web page served at ``/``.
"""
