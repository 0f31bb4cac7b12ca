r"""Serves a trained run over HTTP, with adaptive batching (LitServe).

  pip install -e '.[serve]'
  python -m fakejax.serve --workdir runs/quick                       # http://127.0.0.1:8000/
  python -m fakejax.serve --workdir RUN --host 0.0.0.0 --port 8080 --max_batch_size 32

Endpoints: POST /v1/detect (image bytes, or files as multipart/form-data) -> JSON per image
(p_fake, label, probabilities, mode, view, n_patches, latency_ms); GET /v1/model (architecture,
classes, training data, validation metrics); GET /healthz; GET /metrics (Prometheus); GET / (a
page to drop images on). Images are judged as `fakejax.predict` judges them (default view
'auto': whole, or tiles for photos over 4 MP), with the run's threshold. Bad input gets a 4xx
JSON {error, detail}; the server keeps serving. Stop it with Ctrl+C or SIGTERM.
"""

import os
import signal

from absl import flags

from fakejax import cli

if __name__ == "__main__":
  # Defined only when this file is the program: LitServe's spawned worker imports it again.
  _F = cli.define_scoring_flags("serve")
  _HOST = flags.DEFINE_enum("host", "127.0.0.1", ["127.0.0.1", "0.0.0.0", "::"],
                            "Interface to listen on (0.0.0.0 / :: : every interface).")
  _PORT = flags.DEFINE_integer("port", 8000, "TCP port (1024-65535).")
  _MAX_BATCH = flags.DEFINE_integer("max_batch_size", 16, "Most requests scored together; 1 turns "
                                    "batching off.")
  _BATCH_TIMEOUT = flags.DEFINE_float("batch_timeout", 0.05, "Seconds the batcher waits for more "
                                      "requests before scoring a batch that is not full.")
  _EVAL_BATCH = flags.DEFINE_integer("eval_batch", 0, "Inputs per forward pass, a multiple of the "
                                     "device count (0: the device count on CPU, where padding a "
                                     "batch costs as much as images; the run's eval batch on GPU).")
  _MAX_BODY = flags.DEFINE_integer("max_body_bytes", 32 << 20, "Largest request body.")
  _MAX_PIXELS = flags.DEFINE_integer("max_pixels", 1 << 26, "Larger images are refused unread "
                                     "(decompression bombs).")
  _MAX_IMAGES = flags.DEFINE_integer("max_images", 16, "Most images per request.")
  _TIMEOUT = flags.DEFINE_float("timeout", 60.0, "Seconds a request may take, queueing included "
                                "(then 504).")
  _MAX_IN_FLIGHT = flags.DEFINE_integer("max_in_flight", 256, "Most requests in progress; more "
                                        "are answered 503 at once (bounds memory under overload).")
  _MAX_SHAPES = flags.DEFINE_integer("max_shapes", 64, "Compiled input shapes kept; past this many "
                                     "image sizes (whole view), compiled programs are dropped and "
                                     "rebuilt on demand (bounds memory).")


def _on_sigterm(main_pid):
  """SIGTERM (a process manager, `kill`) stops the server as Ctrl+C does: LitServe then stops
  its HTTP process, the inference worker and its Manager. The processes LitServe forks inherit
  this handler; in them SIGTERM keeps its default meaning (exit)."""
  def handler(signum, frame):
    del frame
    if os.getpid() == main_pid:
      raise KeyboardInterrupt
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
  return handler


def main(argv):
  if len(argv) > 1:
    raise cli.UserError(f"unexpected arguments: {' '.join(argv[1:])}")
  workdir = _F.workdir.value
  if not os.path.exists(os.path.join(workdir, "run.json")):
    raise cli.UserError(f"{workdir} is not a fakejax run (no run.json); train one with "
                        "`python -m fakejax.train`")
  if not 1024 <= _PORT.value <= 65535:
    raise cli.UserError(f"--port must be 1024-65535, got {_PORT.value}")
  try:
    from fakejax.serve import app  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise cli.UserError(f"serving needs the serve extra: pip install -e '.[serve]' ({e})") from None
  settings = app.Settings(
      workdir=os.path.abspath(workdir), checkpoint=_F.checkpoint.value, dtype=_F.dtype.value, mode=_F.mode.value,
      view=tuple(cli.view_settings(_F).items()), tta=tuple(_F.tta.value), threads=_F.threads.value,
      threshold=_F.threshold.value, max_batch_size=_MAX_BATCH.value,
      batch_timeout=_BATCH_TIMEOUT.value, eval_batch=_EVAL_BATCH.value,
      max_body_bytes=_MAX_BODY.value, max_pixels=_MAX_PIXELS.value, max_images=_MAX_IMAGES.value,
      timeout=_TIMEOUT.value, max_in_flight=_MAX_IN_FLIGHT.value, max_shapes=_MAX_SHAPES.value)
  server = app.build(settings)
  signal.signal(signal.SIGTERM, _on_sigterm(os.getpid()))
  print(f"fakejax.serve: loading {workdir}; serving on http://{_HOST.value}:{_PORT.value}/ once "
        "/healthz answers 200", flush=True)
  try:
    server.run(host=_HOST.value, port=_PORT.value, num_api_servers=1, log_level="warning",
               generate_client_file=False)
  except RuntimeError as e:  # LitServe: the worker failed to load the model.
    raise cli.UserError(f"the model could not be loaded ({app.setup_error(server) or e})") from None


if __name__ == "__main__":
  flags.mark_flag_as_required("workdir")
  cli.run(main, devices="shared")
