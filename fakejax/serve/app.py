"""The service: a LitServe model API with adaptive batching, behind our own HTTP routes.

Processes (LitServe's): the main process starts a multiprocessing Manager (forked: it holds
LitServe's request queue), spawns ONE inference worker and forks one HTTP server (uvicorn).
JAX is initialised only in the inference worker (`DetectAPI.setup`): the forks happen in a
process that never touched it.

A request to POST /v1/detect is read, limited and decoded in the HTTP server (threads), so bad
input is refused there with a 4xx JSON reason and never reaches the model. The decoded images
go to LitServe's queue; its batching loop hands `DetectAPI.predict` the requests that arrived
within `batch_timeout` (up to `max_batch_size` of them), and all their images are scored by ONE
`Evaluator.run` call, the code path of `fakejax.predict` and `fakejax.evaluate`: same decoder,
view, threshold and decision rule, so a served score equals predict's for the same file (to
about 1e-7: XLA:CPU's result for an image moves in the 7th digit with its row and batch size).

With explain=true, the images also go through `fakejax.explain`'s Grad-CAM evaluator (the
scores stay those of the path above) and each result carries the overlay as a base64 PNG.

Reaching LitServe's queue from our own route uses `litserve.server.RegularRequestHandler`,
which is internal to LitServe: the `serve` extra pins litserve to 0.2.x, and
tests/test_serve.py exercises this path.
"""

import asyncio
import base64
import dataclasses
import importlib.resources
import math
import multiprocessing
import queue
import time

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.responses import JSONResponse
from fastapi.responses import Response
import litserve as ls
from litserve.server import RegularRequestHandler
import numpy as np
import prometheus_client as prom
from starlette.exceptions import HTTPException

from fakejax.datasets import images

# Where LitServe would mount the model API; that route is removed, only our /v1/detect reaches it.
_INTERNAL_PATH = "/_internal/detect"
RAW_TYPES = ("application/octet-stream",)  # Besides any image/*.
# load_rgb's reasons (fakejax.datasets.images) -> (error kind, HTTP status). Anything else it
# refuses is an image it cannot decode (truncated, corrupt, unsupported).
_REASONS = (("empty file", "empty", 400), ("not an image", "not_an_image", 422),
            ("decompression bomb", "too_many_pixels", 413), ("too small", "too_small", 422))


@dataclasses.dataclass(frozen=True)
class Settings:
  """What a server serves and its limits (the flags of `python -m fakejax.serve`)."""
  workdir: str
  checkpoint: str = "best"
  dtype: str = ""  # '' the run's, 'auto', 'float32', 'bfloat16' (runs.Run).
  mode: str = "auto"
  view: tuple = ()               # The View's other settings, (key, value) pairs (cli.view_settings).
  tta: tuple = ()                # Test-time copies (augment.tta_copies specs).
  threads: int = 0               # Decoding threads (0: the run's eval_threads).
  threshold: float = None        # None: the run's config.threshold.
  max_batch_size: int = 16       # Requests per model call (LitServe's adaptive batch).
  batch_timeout: float = 0.05    # Seconds the batcher waits for a batch to fill.
  eval_batch: int = 0            # Inputs per forward pass; 0: the device count on CPU, else the run's.
  max_body_bytes: int = 32 << 20
  max_pixels: int = 1 << 26      # Per image; larger declared sizes are refused unread (bombs).
  max_images: int = 16           # Per request.
  timeout: float = 60.0          # Seconds from receipt to answer, queueing included.
  max_in_flight: int = 256       # Requests being decoded or scored; more get 503.
  max_shapes: int = 64           # Compiled input shapes kept (whole images: one per size).


class Rejected(Exception):
  """A request refused with a 4xx/5xx JSON body {error, detail[, images]}; `close`: its body
  was not read to the end, so the connection cannot carry another request."""

  def __init__(self, kind, detail, status, images=None, close=False):
    super().__init__(detail)
    self.kind, self.detail, self.status, self.images = kind, detail, status, images
    self.close = close


def decode(blob, max_pixels):
  """uint8 HxWx3 pixels of an uploaded file, with fakejax.predict's decoder and refusals.

  Raises:
    Rejected: with the error kind, the reason and the HTTP status.
  """
  try:
    return images.load_rgb(blob, max_pixels)[0]
  except images.BadImage as e:
    reason = str(e)
    kind, status = next(((k, s) for prefix, k, s in _REASONS if reason.startswith(prefix)),
                        ("undecodable", 422))
    raise Rejected(kind, reason, status) from None


def _finite(x):
  """JSON-safe copy: NaN/inf (e.g. an AUC of a one-class validation set) become null."""
  if isinstance(x, dict):
    return {k: _finite(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_finite(v) for v in x]
  if isinstance(x, (float, np.floating)):
    return float(x) if math.isfinite(x) else None
  if isinstance(x, np.integer):
    return int(x)
  return x


# ---------------------------------------------------------------------------
# The model side: runs in LitServe's spawned inference worker.
# ---------------------------------------------------------------------------
class DetectAPI(ls.LitAPI):
  """Scores the images of a batch of requests with one Evaluator.run call."""

  def __init__(self, settings, card_queue):
    super().__init__(max_batch_size=settings.max_batch_size, batch_timeout=settings.batch_timeout,
                     api_path=_INTERNAL_PATH)
    self.settings = settings
    self.card_queue = card_queue  # The model card goes back to the HTTP side once loaded.

  def setup(self, device):
    del device  # JAX picks the backend; the run's mesh spans all its devices.
    try:
      self._load()
    except Exception as e:  # LitServe only logs it; the command line reports it in one line.
      self.card_queue.put({"setup_error": f"{type(e).__name__}: {e}"})
      raise
    self.card_queue.put(self.model_card())

  def _load(self):
    from absl import logging  # pylint: disable=g-import-not-at-top
    from fakejax import augment  # pylint: disable=g-import-not-at-top  (JAX: this process only)
    from fakejax import runs  # pylint: disable=g-import-not-at-top
    from fakejax import scoring  # pylint: disable=g-import-not-at-top
    logging.set_verbosity(logging.WARNING)
    import jax  # pylint: disable=g-import-not-at-top
    s = self.settings
    # The evaluator pads every forward pass to its batch: free on an accelerator, but on a CPU
    # padding costs as much as images, and a served batch is rarely full (docs/performance.md).
    batch = s.eval_batch or (jax.device_count() if jax.default_backend() == "cpu" else 0)
    self.run = runs.Run(s.workdir, s.checkpoint, batch_size=batch, threads=s.threads, dtype=s.dtype)
    self.view = self.run.view(s.mode, **dict(s.view))
    self.copies = augment.tta_copies(list(s.tta))
    self.threshold = self.run.config.threshold if s.threshold is None else s.threshold
    self._shapes = set()
    side = max(self.run.config.data.image_size, scoring.MIN_WHOLE)
    self.score([np.zeros((side, side, 3), np.uint8)])  # Compile the usual shape before serving.
    try:
      from fakejax import explain  # pylint: disable=g-import-not-at-top
      self.explain = explain
    except ImportError:
      self.explain = None
    self.cam = None  # Grad-CAM evaluator, built (and compiled) on the first explain request.

  def model_card(self):
    import jax  # pylint: disable=g-import-not-at-top
    c, info, meta = self.run.config, self.run.info, self.run.meta
    return _finite({
        "architecture": c.model.name, "width": c.model.width, "dtype": c.model.dtype,
        "preprocess": self.run.preprocess, "task": info.get("task", "binary"),
        "classes": list(self.run.class_names), "image_size": c.data.image_size,
        "eval_resize": c.data.eval_resize,
        "training": {"dataset": info.get("dataset"), "train_sources": list(c.data.train_sources),
                     "exclude_categories": list(c.data.exclude_categories)},
        "checkpoint": {"which": self.settings.checkpoint, "step": meta.get("step")},
        "validation": {**info.get("validation", {}),
                       "metrics": meta.get("val") or meta.get("best_val")},
        "view": {"mode": self.view.mode, "max_whole_pixels": self.view.max_whole_pixels,
                 "tile": self.view.tile, "patch_size": self.view.patch_size},
        "threshold": self.threshold, "explain": self.explain is not None,
        "backend": jax.default_backend(),
        "devices": jax.device_count(), "eval_batch": self.run.batch})

  def decode_request(self, request):  # LitServe looks this parameter up by the name `request`.
    return request  # Decoded and checked on the HTTP side already.

  def batch(self, inputs):
    return inputs  # A list of requests; predict flattens their images.

  def unbatch(self, output):
    return output

  def predict(self, x):
    single = not isinstance(x, list)  # max_batch_size=1: LitServe skips batch() and unbatch().
    requests = [x] if single else x
    arrays = [a for r in requests for a in r["images"]]
    scored = self.score(arrays)
    starts = np.cumsum([0] + [len(r["images"]) for r in requests])
    wanted = [i for r, a, b in zip(requests, starts, starts[1:]) if r.get("explain")
              for i in range(a, b) if "error" not in scored[i]]
    if wanted:
      self.add_gradcam(arrays, scored, wanted)
    out, start = [], 0
    for j, r in enumerate(requests):
      n = len(r["images"])
      out.append({"results": scored[start:start + n],
                  "batch": {"requests": len(requests), "images": len(arrays)} if j == 0 else None})
      start += n
    return out[0] if single else out

  def score(self, arrays):
    """Per image a result dict, or {'error', 'detail'} for one the view cannot use (too small)."""
    from fakejax import augment  # pylint: disable=g-import-not-at-top
    out, usable = [None] * len(arrays), []
    for i, a in enumerate(arrays):
      try:
        self.view.plan(*a.shape[:2])
        usable.append(i)
      except augment.TooSmall as e:
        out[i] = {"error": "too_small", "detail": str(e)}
    if not usable:
      return out
    self._bound_compiled_shapes([self.view.plan(*arrays[i].shape[:2])[0] for i in usable])
    results = self.run.evaluator.run([arrays[i].shape[:2] for i in usable],
                                     lambda k: arrays[usable[k]], self.view, self.copies, threshold=self.threshold)
    for i, r in zip(usable, results):
      if r.error:  # Decoded and planned above: any error here is a bug (a 500), not bad input.
        raise RuntimeError(f"image {i} could not be scored: {r.error}")
      h, w = arrays[i].shape[:2]
      out[i] = {"p_fake": r.score if r.score == r.score else None, "label": self.run.label_name(r.pred),
                "probabilities": dict(zip(self.run.class_names, map(float, r.probs))),
                "mode": self.view.mode, "view": r.view, "n_patches": r.n_inputs,
                "width": w, "height": h}
    return out

  def _bound_compiled_shapes(self, shapes):
    """The whole-image view compiles one program per image size and jit keeps them all: past
    max_shapes distinct sizes, drop every compiled program (the next requests compile again),
    so arbitrary traffic cannot grow the server's memory without bound."""
    import jax  # pylint: disable=g-import-not-at-top
    seen = self._shapes
    seen.update(map(tuple, shapes))
    if len(seen) > self.settings.max_shapes:
      jax.clear_caches()
      seen.clear()
      seen.update(map(tuple, shapes))

  def add_gradcam(self, arrays, scored, wanted):
    """Adds 'gradcam_png' (base64 overlay on the model's input), 'gradcam_class' and
    'gradcam_layer' to the scored results `wanted`; an image judged by several inputs (tiles,
    patches) gets 'gradcam_error' instead: its maps would be one per input."""
    if self.cam is None:
      self.cam = self.explain.gradcam_evaluator(self.run)  # (evaluator, layer name)
    ev, layer = self.cam
    one = [i for i in wanted if scored[i]["n_patches"] == 1]
    for i in set(wanted) - set(one):
      scored[i]["gradcam_error"] = (f"Grad-CAM is given for images judged as one input; this one "
                                    f"was judged by {scored[i]['n_patches']} ({scored[i]['view']})")
    results = ev.run([arrays[i].shape[:2] for i in one], lambda k: arrays[one[k]], self.view,
                     threshold=self.threshold) if one else []
    for i, r in zip(one, results):
      if r.error:
        raise RuntimeError(f"Grad-CAM of image {i} failed: {r.error}")
      png = self.explain.overlay_png(self.explain.model_input(self.view, arrays[i]), r.outputs["cam"][0])
      scored[i].update(gradcam_png=base64.b64encode(png).decode("ascii"), gradcam_layer=layer,
                       gradcam_class=self.run.class_names[int(r.outputs["target"][0])])

  def encode_response(self, output):
    return output


# ---------------------------------------------------------------------------
# The HTTP side: runs in the forked uvicorn process.
# ---------------------------------------------------------------------------
class _Metrics:
  """Prometheus metrics of one server (its own registry)."""

  def __init__(self):
    self.registry = r = prom.CollectorRegistry()
    self.requests = prom.Counter("fakejax_serve_requests", "Detect requests by HTTP status.",
                                 ["status"], registry=r)
    self.errors = prom.Counter("fakejax_serve_errors", "Refused or failed detect requests by kind.",
                               ["kind"], registry=r)
    self.images = prom.Counter("fakejax_serve_images", "Images scored.", registry=r)
    self.batch_requests = prom.Histogram("fakejax_serve_batch_requests", "Requests per model call.",
                                         buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
    self.batch_images = prom.Histogram("fakejax_serve_batch_images", "Images per model call.",
                                       buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r)
    self.latency = prom.Histogram("fakejax_serve_request_seconds",
                                  "Detect latency (receipt to answer) of answered requests.",
                                  buckets=(.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60),
                                  registry=r)


def _replay(body):
  """An ASGI receive() that hands over an already read body (to parse it as a form)."""
  async def receive():
    return {"type": "http.request", "body": body, "more_body": False}
  return receive


async def _read_uploads(request, s):
  """[(filename or None, bytes)] of a detect request: multipart file parts or one raw body."""
  size = request.headers.get("content-length", "")
  too_big = f"body over the {s.max_body_bytes}-byte limit"
  if size.isdigit() and int(size) > s.max_body_bytes:
    raise Rejected("body_too_large", f"{too_big} ({size} bytes)", 413, close=True)
  body = bytearray()
  async for chunk in request.stream():  # Counted as it arrives: chunked bodies have no length.
    body += chunk
    if len(body) > s.max_body_bytes:
      raise Rejected("body_too_large", too_big, 413, close=True)
  ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
  multipart = ctype == "multipart/form-data"
  if not (multipart or ctype.startswith("image/") or ctype in RAW_TYPES):
    raise Rejected("unsupported_media_type",
                   f"content type {ctype or '(none)'!r} is not accepted: send the image bytes as "
                   "image/* or application/octet-stream, or files as multipart/form-data", 415)
  if not multipart:
    return [(None, bytes(body))]
  try:
    form = await Request(request.scope, _replay(bytes(body))).form(max_files=10_000, max_fields=1000)
  except HTTPException as e:
    raise Rejected("bad_multipart", f"malformed multipart body: {e.detail}", 400) from None
  try:
    files = [v for _, v in form.multi_items() if not isinstance(v, str)]
    if not files:
      raise Rejected("no_images", "the multipart body has no file part (send e.g. -F image=@photo.jpg)",
                     400)
    if len(files) > s.max_images:
      raise Rejected("too_many_images",
                     f"{len(files)} images; the limit is {s.max_images} per request", 413)
    return [(f.filename, await f.read()) for f in files]
  finally:
    await form.close()  # Parts over 1 MB were spooled to temporary files.


def _decode_all(uploads, max_pixels):
  """Decoded images, or Rejected naming every bad one (the first one's kind and status)."""
  arrays, bad = [], []
  for i, (name, blob) in enumerate(uploads):
    try:
      arrays.append(decode(blob, max_pixels))
    except Rejected as e:
      bad.append((i, name, e))
  if bad:
    raise _bad_images([(i, name, e.kind, e.detail, e.status) for i, name, e in bad])
  return arrays


def _bad_images(bad):
  """Rejected for a request with unusable images: [(index, filename, kind, reason, status)]."""
  i, name, kind, detail, status = bad[0]
  where = f"image {i}" + (f" ({name})" if name else "")
  more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
  return Rejected(kind, f"{where}: {detail}{more}", status,
                  [{"index": i, **({"filename": n} if n else {}), "error": k, "detail": d}
                   for i, n, k, d, _ in bad])


def _explain_wanted(request):
  value = request.query_params.get("explain", "false").lower()
  if value not in ("true", "1", "yes", "false", "0", "no"):
    raise Rejected("bad_parameter", f"explain must be true or false, got {value!r}", 400)
  return value in ("true", "1", "yes")


def setup_error(server):
  """The reason the inference worker of a LitServer from `build` failed to load, if it said."""
  try:
    return server.lit_api.card_queue.get(timeout=1).get("setup_error")
  except queue.Empty:
    return None


def build(s):
  """A LitServer for Settings `s` with our routes; start it with `.run(host=..., port=...)`."""
  card_queue = multiprocessing.get_context("spawn").Queue()
  api = DetectAPI(s, card_queue)
  server = ls.LitServer(api, accelerator="cpu", devices=1, workers_per_device=1, timeout=s.timeout,
                        healthcheck_path="/healthz", disable_openapi_url=True)
  app = server.app
  # LitServe's own routes: keep its /healthz (200 once the model is loaded); drop its "/"
  # ("litserve running"), /info and the model API route (only /v1/detect reaches the model).
  app.router.routes[:] = [r for r in app.router.routes if getattr(r, "path", None) == "/healthz"]
  routes = _Routes(s, RegularRequestHandler(api, server), card_queue)
  app.post("/v1/detect")(routes.detect)
  app.get("/v1/model")(routes.model)
  app.get("/metrics")(routes.prometheus)
  app.get("/")(routes.index)
  return server


class _Routes:
  """The service's routes: /v1/detect, /v1/model, /metrics and the page."""

  def __init__(self, s, handler, card_queue):
    self.s, self.handler, self.card_queue = s, handler, card_queue
    self.metrics = _Metrics()
    self.page = importlib.resources.files("fakejax.serve").joinpath("static/index.html").read_text()
    self.in_flight, self.card_info, self.card_lock = 0, None, asyncio.Lock()
    self.limits = {k: getattr(s, k) for k in ("max_body_bytes", "max_pixels", "max_images", "timeout",
                                              "max_in_flight")}

  def refuse(self, e):
    self.metrics.errors.labels(e.kind).inc()
    self.metrics.requests.labels(str(e.status)).inc()
    body = {"error": e.kind, "detail": e.detail}
    if e.images:
      body["images"] = e.images
    return JSONResponse(body, status_code=e.status, headers={"connection": "close"} if e.close else None)

  async def detect(self, request: Request):
    s, t0 = self.s, time.perf_counter()
    if self.in_flight >= s.max_in_flight:
      return self.refuse(Rejected("overloaded", f"{s.max_in_flight} requests in flight; retry later", 503))
    self.in_flight += 1
    try:
      uploads = await _read_uploads(request, s)  # First: a refusal leaves no unread body behind.
      explain = _explain_wanted(request)
      if explain and not (await self.card()).get("explain"):
        raise Rejected("explain_unavailable", "explain not available: this build has no "
                       "fakejax.explain (Grad-CAM); ask without explain=true", 501)
      names = [name for name, _ in uploads]
      arrays = await asyncio.to_thread(_decode_all, uploads, s.max_pixels)
      del uploads
      # LitServe's timeout bounds only the time queued; this bounds the whole answer.
      out = await asyncio.wait_for(self.handler.handle_request({"images": arrays, "explain": explain}, dict),
                                   s.timeout - (time.perf_counter() - t0))
    except Rejected as e:
      return self.refuse(e)
    except (asyncio.TimeoutError, TimeoutError):
      return self.refuse(Rejected("timeout", f"not answered within {s.timeout} s", 504))
    except HTTPException as e:  # From LitServe: 504 queued too long, 500 the model failed.
      if e.status_code == 504:
        return self.refuse(Rejected("timeout", f"queued for over {s.timeout} s", 504))
      return self.refuse(Rejected("internal", "the model failed on this batch (see the server log)", 500))
    finally:
      self.in_flight -= 1
    return self._answer(out, names, t0)

  def _answer(self, out, names, t0):
    """The response to a scored request: its results, or a 422 naming the bad images."""
    metrics = self.metrics
    if out["batch"]:
      metrics.batch_requests.observe(out["batch"]["requests"])
      metrics.batch_images.observe(out["batch"]["images"])
    bad = [(i, name, r["error"], r["detail"], 422)
           for i, (name, r) in enumerate(zip(names, out["results"])) if "error" in r]
    if bad:
      return self.refuse(_bad_images(bad))
    latency_ms = round(1e3 * (time.perf_counter() - t0), 2)
    metrics.requests.labels("200").inc()
    metrics.images.inc(len(out["results"]))
    metrics.latency.observe(latency_ms / 1e3)
    return {"results": [{"index": i, **({"filename": n} if n else {}), **r, "latency_ms": latency_ms}
                        for i, (n, r) in enumerate(zip(names, out["results"]))],
            "latency_ms": latency_ms}

  async def card(self):
    """The worker's model card (put on the queue before /healthz turns 200)."""
    async with self.card_lock:
      if self.card_info is None:
        try:
          self.card_info = await asyncio.to_thread(self.card_queue.get, True, 30)
        except queue.Empty:
          raise Rejected("not_ready", "the model is still loading", 503) from None
    return self.card_info

  async def model(self):
    try:
      info = await self.card()
    except Rejected as e:
      return JSONResponse({"error": e.kind, "detail": e.detail}, e.status)
    return {**info, "limits": self.limits,
            "batching": {"max_batch_size": self.s.max_batch_size, "batch_timeout": self.s.batch_timeout}}

  async def prometheus(self):
    return Response(prom.generate_latest(self.metrics.registry), media_type=prom.CONTENT_TYPE_LATEST)

  async def index(self):
    return HTMLResponse(self.page)
