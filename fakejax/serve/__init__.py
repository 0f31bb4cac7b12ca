"""Serving a trained run over HTTP: `python -m fakejax.serve --workdir RUN`.

  app       the LitServe model API (one spawned inference worker, adaptive batching) and the
            HTTP routes: /v1/detect, /v1/model, /healthz, /metrics and the page at /
  __main__  the command line
  load      start/stop a server process and the loopback load test (`python -m fakejax.serve.load`)
  static/   the page (plain HTML/JS, no network assets)

Needs the `serve` extra (`pip install -e '.[serve]'`); nothing outside this package imports it.
"""
