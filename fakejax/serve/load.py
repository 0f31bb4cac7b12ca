r"""Starting and stopping a server process, and the loopback load test.

  python -m fakejax.serve.load --workdir runs/quick          # 32 clients for 30 s; 16:0, then 1:1
  python -m fakejax.serve.load --workdir RUN --clients 32 --seconds 30 --servers 16:0,16:32,1:1
  python -m fakejax.serve.load --workdir RUN --sizes 64x64      # one image size only

--servers lists server settings as MAX_BATCH_SIZE:EVAL_BATCH (requests per model call : inputs
per forward pass; 0: the server's default, the device count on CPU). 1:1 is batching off.

For each server it starts `python -m fakejax.serve` on 127.0.0.1 and sends every test image once
alone (this compiles each image size and records its reference score). Then N concurrent clients
send, for the given time and in a seeded order: one image (raw bytes or multipart), two or three
images in one request, or a bad file (empty, text, truncated, decompression bomb, too small,
wrong content type). Every answer is checked: the expected status (a 4xx for a bad file, never a
5xx), no connection lost, one result per image sent, each with the file name, size and
reference score of that image, so an answer mixed up with another request's is caught (scores
are compared to a relative 1e-5: XLA:CPU's result for an image moves in the 7th digit with its
row in the batch). The server's memory (RSS of its process group) is sampled twice a second and
its CPU time measured, so that the CPU cost per image can be compared even when other work
shares the machine. One Markdown row per server is printed; the exit status is non-zero on any
5xx, lost or mismatched answer.
"""

import asyncio
import collections
import dataclasses
import io
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
from PIL import Image


# ---------------------------------------------------------------------------
# A server process.
# ---------------------------------------------------------------------------
@dataclasses.dataclass
class Server:
  proc: subprocess.Popen
  url: str
  log: str
  start_s: float


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def start(workdir, args=(), port=None, log=None, timeout=300, env=None):
  """Starts `python -m fakejax.serve` in its own process group; returns once /healthz is 200.

  Raises:
    RuntimeError: the server exited or did not become healthy in time (the log's tail says why).
  """
  port = port or free_port()
  log = log or os.path.join(os.environ.get("TMPDIR", "/tmp"), f"fakejax_serve_{port}.log")
  t0 = time.perf_counter()
  with open(log, "w") as f:
    proc = subprocess.Popen([sys.executable, "-m", "fakejax.serve", "--workdir", workdir,
                             "--port", str(port), *args], stdout=f, stderr=subprocess.STDOUT,
                            start_new_session=True, env={**os.environ, **(env or {})})
  url = f"http://127.0.0.1:{port}"
  server = Server(proc, url, log, 0.0)
  while time.perf_counter() - t0 < timeout:
    if proc.poll() is not None:
      raise RuntimeError(f"the server exited with status {proc.returncode}: {log_tail(log)}")
    try:
      with urllib.request.urlopen(url + "/healthz", timeout=2) as r:
        if r.status == 200:
          server.start_s = time.perf_counter() - t0
          return server
    except OSError:
      pass
    time.sleep(0.2)
  stop(server)
  raise RuntimeError(f"the server was not healthy after {timeout} s: {log_tail(log)}")


def log_tail(path, n=1500):
  with open(path, errors="replace") as f:
    return f.read()[-n:]


def group_pids(pgid):
  """Live processes of a process group (Linux /proc)."""
  pids = []
  for d in os.listdir("/proc"):
    if d.isdigit():
      try:
        with open(f"/proc/{d}/stat") as f:
          fields = f.read().rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
          pids.append(int(d))
      except (OSError, IndexError, ValueError):
        pass
  return pids


def _group_sum(pgid, name, value):
  """The sum over a process group's live processes of `value(text of /proc/PID/name)`; a process
  gone or unreadable meanwhile counts 0."""
  total = 0
  for pid in group_pids(pgid):
    try:
      with open(f"/proc/{pid}/{name}") as f:
        total += value(f.read())
    except (OSError, StopIteration, IndexError, ValueError):
      pass
  return total


def rss_bytes(pgid):
  """Resident memory of a process group: the sum of its processes' RSS."""
  return _group_sum(pgid, "status", lambda text: next(
      int(line.split()[1]) * 1024 for line in text.splitlines() if line.startswith("VmRSS:")))


def cpu_seconds(pgid):
  """CPU time (user + system) used so far by the live processes of a process group."""
  def ticks(text):
    fields = text.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime
  return _group_sum(pgid, "stat", ticks) / os.sysconf("SC_CLK_TCK")


def stop(server, grace=20):
  """SIGTERM to the server (it stops its worker, HTTP process and Manager); what is left of its
  process group after `grace` seconds is killed. Returns True when it all ended by itself."""
  proc = server.proc
  if proc.poll() is None:
    proc.send_signal(signal.SIGTERM)
  try:
    proc.wait(grace)
  except subprocess.TimeoutExpired:
    pass
  deadline = time.monotonic() + 5
  while group_pids(proc.pid) and time.monotonic() < deadline:
    time.sleep(0.1)
  clean = proc.poll() is not None and not group_pids(proc.pid)
  if not clean:
    try:
      os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
      pass
    proc.wait(5)
  return clean


# ---------------------------------------------------------------------------
# Test files.
# ---------------------------------------------------------------------------
def test_image(h, w, seed):
  """A smooth random colour image (PNG or JPEG bytes decode to different pixels; both are used)."""
  rng = np.random.default_rng(seed)
  small = rng.integers(0, 256, (max(h // 8, 2), max(w // 8, 2), 3), np.uint8)
  img = Image.fromarray(small).resize((w, h), Image.BILINEAR)
  noise = rng.integers(-12, 13, (h, w, 3))
  return Image.fromarray(np.clip(np.asarray(img, int) + noise, 0, 255).astype(np.uint8))


def encode(img, fmt):
  buf = io.BytesIO()
  img.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
  return buf.getvalue()


def bomb_png(side=60000):
  """A valid PNG header declaring side x side pixels (refused before any pixel is decoded)."""
  import struct  # pylint: disable=g-import-not-at-top
  import zlib  # pylint: disable=g-import-not-at-top

  def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
  ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
  return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


SIZES = ((64, 64), (96, 96), (128, 128), (96, 160), (256, 256))


def good_files(sizes=SIZES):
  """{name: bytes} of decodable test images, PNG and JPEG, several sizes."""
  files = {}
  for k, (h, w) in enumerate(sizes):
    for fmt in ("PNG", "JPEG"):
      files[f"img{k}_{w}x{h}.{fmt.lower()}"] = encode(test_image(h, w, 100 * k + len(fmt)), fmt)
  return files


def bad_files():
  """[(name, bytes, content type, expected HTTP status)] that the server must refuse with a 4xx."""
  png = encode(test_image(64, 64, 7), "PNG")
  return [("empty.png", b"", "image/png", 400),
          ("notes.txt", b"this is not an image\n" * 20, "image/png", 422),
          ("truncated.png", png[:len(png) // 2], "image/png", 422),
          ("bomb.png", bomb_png(), "image/png", 413),
          ("tiny.png", encode(test_image(16, 16, 3), "PNG"), "image/png", 422),
          ("wrong_type.png", png, "text/plain", 415)]


# ---------------------------------------------------------------------------
# The load test.
# ---------------------------------------------------------------------------
async def _load(url, clients, seconds, seed, sizes, *, rss_of, cpu_of):
  import httpx  # pylint: disable=g-import-not-at-top
  goods = good_files(sizes)
  bads = bad_files()
  names = sorted(goods)
  limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
  async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as c:
    ref = {}
    for name in names:  # Reference scores, one image at a time; compiles every size first.
      r = await c.post("/v1/detect", files={"image": (name, goods[name])})
      r.raise_for_status()
      ref[name] = r.json()["results"][0]
    eval_batch = (await c.get("/v1/model")).json()["eval_batch"]
    metrics_before = (await c.get("/metrics")).text
    run = _LoadRun(rss=[rss_of()])
    stats, latencies, rss, mismatches = run.stats, run.latencies, run.rss, run.mismatches
    t_end = time.perf_counter() + seconds

    async def sample_rss():
      while time.perf_counter() < t_end:
        await asyncio.sleep(0.5)
        rss.append(rss_of())

    def check(sent, body):
      results = body.get("results", [])
      if len(results) != len(sent):
        return f"{len(results)} results for {len(sent)} images"
      for name, res in zip(sent, results):
        want = ref[name]
        if res.get("filename", name) != name or not math.isclose(
            res["p_fake"], want["p_fake"], rel_tol=1e-5, abs_tol=1e-7) or (
            res["width"], res["height"]) != (want["width"], want["height"]):
          return f"{name}: got {res.get('filename')} p_fake={res['p_fake']} {res['width']}x{res['height']}"
      return None

    async def client(k):
      rng = np.random.default_rng([seed, k])
      while time.perf_counter() < t_end:
        headers, files, content, sent, expect = _random_request(rng, names, goods, bads)
        t = time.perf_counter()
        try:
          r = await c.post("/v1/detect", files=files, content=content, headers=headers)
        except httpx.HTTPError as e:
          stats[f"transport:{type(e).__name__}"] += 1
          continue
        stats[r.status_code] += 1
        if r.status_code != expect:
          mismatches.append(f"status {r.status_code} (expected {expect}): {r.text[:200]}")
        elif expect == 200:
          latencies.append(time.perf_counter() - t)
          stats["images"] += len(sent)
          problem = check(sent, r.json())
          if problem:
            mismatches.append(problem)

    t0, cpu0 = time.perf_counter(), cpu_of()
    await asyncio.gather(sample_rss(), *[client(k) for k in range(clients)])
    elapsed, cpu = time.perf_counter() - t0, cpu_of() - cpu0
    metrics_after = (await c.get("/metrics")).text
  return run.summary(eval_batch, clients, elapsed, cpu, metrics_before, metrics_after)


def _random_request(rng, names, goods, bads):
  """One client request: (headers, files, content, the good images sent, the status expected).
  5 % bad files, 10 % several images, 40 % one multipart image, 45 % a raw image body."""
  u = rng.random()
  headers, files, content, sent, expect = None, None, None, [], 200
  if u < 0.05:
    _, content, ctype, expect = bads[rng.integers(len(bads))]
    headers = {"content-type": ctype}
  elif u < 0.15:
    k = rng.integers(2, min(3, len(names)) + 1)
    sent = [names[i] for i in rng.choice(len(names), k, replace=False)]
    files = [("images", (n, goods[n])) for n in sent]
  elif u < 0.55:
    sent = [names[rng.integers(len(names))]]
    files = {"image": (sent[0], goods[sent[0]])}
  else:
    sent = [names[rng.integers(len(names))]]
    content = goods[sent[0]]
    headers = {"content-type": "image/png" if sent[0].endswith("png") else "image/jpeg"}
  return headers, files, content, sent, expect


@dataclasses.dataclass
class _LoadRun:
  """What the load test's clients saw: status counts, latencies, RSS samples, wrong answers."""
  stats: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  latencies: list = dataclasses.field(default_factory=list)
  rss: list = dataclasses.field(default_factory=list)
  mismatches: list = dataclasses.field(default_factory=list)

  def summary(self, eval_batch, clients, elapsed, cpu, metrics_before, metrics_after):
    """The load test's report (run_load_test's return value)."""
    stats, latencies, rss = self.stats, self.latencies, self.rss
    lat = np.sort(latencies) if latencies else np.array([np.nan])
    calls = _metric(metrics_after, "fakejax_serve_batch_requests_count") - _metric(
        metrics_before, "fakejax_serve_batch_requests_count")
    batched = _metric(metrics_after, "fakejax_serve_batch_requests_sum") - _metric(
        metrics_before, "fakejax_serve_batch_requests_sum")
    codes = {k: v for k, v in stats.items() if k != "images"}
    return {"eval_batch_used": eval_batch, "clients": clients, "seconds": round(elapsed, 1),
            "ok_requests": len(latencies), "images": stats["images"],
            "requests_per_s": round(len(latencies) / elapsed, 1),
            "images_per_s": round(stats["images"] / elapsed, 1),
            # Robust to other work on the machine, unlike throughput: the server's CPU per image.
            "server_cpu_ms_per_image": round(1e3 * cpu / max(stats["images"], 1), 1),
            "p50_ms": round(1e3 * float(np.percentile(lat, 50)), 1),
            "p99_ms": round(1e3 * float(np.percentile(lat, 99)), 1),
            # The server's own view (receipt to answer), without the client's queueing: bucket edges.
            "server_p50_p99_ms_at_most": _server_quantiles(metrics_before, metrics_after),
            "codes": {str(k): v for k, v in sorted(codes.items(), key=str)},
            "5xx": sum(v for k, v in codes.items() if isinstance(k, int) and k >= 500),
            "lost": sum(v for k, v in codes.items() if str(k).startswith("transport:")),
            "mismatches": len(self.mismatches), "mismatch_examples": self.mismatches[:3],
            "mean_requests_per_batch": round(batched / calls, 2) if calls else None,
            "rss_mib": {"start": round(rss[0] / 2**20), "max": round(max(rss) / 2**20),
                        "end": round(rss[-1] / 2**20)},
            "load_average_1min": round(os.getloadavg()[0], 1)}  # Other work on the machine.


def _server_quantiles(before, after, qs=(0.5, 0.99)):
  """Upper bounds (bucket edges, ms) of the server-side latency quantiles between two scrapes."""
  def buckets(text):
    return {float(le): float(n) for le, n in re.findall(
        r'^fakejax_serve_request_seconds_bucket\{le="([0-9.e+]+)"\} ([0-9.e+]+)$', text, re.M)}
  b, a = buckets(before), buckets(after)
  counts = sorted((le, a[le] - b.get(le, 0.0)) for le in a)
  if not counts or not counts[-1][1]:
    return [None] * len(qs)
  return [next((1e3 * le for le, n in counts if n >= q * counts[-1][1]), None) for q in qs]


def _metric(text, name):
  m = re.search(rf"^{name} ([0-9.e+]+)$", text, re.M)
  return float(m.group(1)) if m else 0.0


def run_load(url, clients=32, seconds=30.0, seed=0, pgid=None, sizes=SIZES):
  """The load test against a running server (see the module docstring); returns its numbers.

  Args:
    url: the server, http://127.0.0.1:PORT.
    clients, seconds: concurrent clients, and for how long.
    seed: the clients' choice of requests.
    pgid: the server's process group, for its memory (RSS) and CPU time; None: not measured.
    sizes: (height, width) of the good test images (each is compiled once, before the clock).
  """
  return asyncio.run(_load(url, clients, seconds, seed, sizes, rss_of=lambda: rss_bytes(pgid) if pgid else 0,
                           cpu_of=lambda: cpu_seconds(pgid) if pgid else 0.0))


def main():
  import argparse  # pylint: disable=g-import-not-at-top  (no absl flags: a plain script)
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--workdir", required=True)
  p.add_argument("--clients", type=int, default=32)
  p.add_argument("--seconds", type=float, default=30)
  p.add_argument("--servers", default="16:0,1:1", help="MAX_BATCH_SIZE:EVAL_BATCH,... (0: default)")
  p.add_argument("--batch_timeout", type=float, default=0.05)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--sizes", default=",".join(f"{w}x{h}" for h, w in SIZES),
                 help="WxH of the good test images, each as PNG and JPEG")
  a = p.parse_args()
  sizes = [tuple(int(v) for v in wh.split("x"))[::-1] for wh in a.sizes.split(",")]
  rows = []
  for mbs, eval_batch in [map(int, x.split(":")) for x in a.servers.split(",")]:
    flags = ["--max_batch_size", str(mbs), "--eval_batch", str(eval_batch),
             "--batch_timeout", str(a.batch_timeout)]
    server = start(a.workdir, flags)
    try:
      res = run_load(server.url, a.clients, a.seconds, a.seed, server.proc.pid, sizes)
    finally:
      stop(server)
    res = {"max_batch_size": mbs, "eval_batch": eval_batch, "start_s": round(server.start_s, 1),
           **res}
    print(json.dumps(res), flush=True)
    rows.append(res)
  cols = ("max_batch_size : eval_batch", "requests/s", "images/s", "server CPU ms/image", "p50 ms",
          "p99 ms", "server p50 / p99 ms (at most)", "mean requests/batch", "5xx", "lost", "mismatches", "status counts",
          "RSS MiB start / max / end", "load average")
  print("\n| " + " | ".join(cols) + " |\n" + "|---" * len(cols) + "|")
  for r in rows:
    rss = r["rss_mib"]
    cells = (f"{r['max_batch_size']} : {r['eval_batch_used']}", r["requests_per_s"],
             r["images_per_s"], r["server_cpu_ms_per_image"], r["p50_ms"], r["p99_ms"],
             " / ".join(f"{v:g}" if v else "?" for v in r["server_p50_p99_ms_at_most"]),
             r["mean_requests_per_batch"], r["5xx"], r["lost"], r["mismatches"],
             " ".join(f"{k}:{v}" for k, v in r["codes"].items()),
             f"{rss['start']} / {rss['max']} / {rss['end']}", r["load_average_1min"])
    print("| " + " | ".join(str(c) for c in cells) + " |")
  if any(r["5xx"] or r["lost"] or r["mismatches"] for r in rows):
    sys.exit("load test: 5xx answers, lost or mismatched responses (see above)")


if __name__ == "__main__":
  main()
