"""fakejax.serve: a real server process (started once for the module) and a real HTTP client."""

import base64
import concurrent.futures
import io
import os
import shutil
import subprocess
import sys

from PIL import Image
import pytest

pytest.importorskip("litserve", reason="needs the serve extra: pip install -e '.[serve]'")
httpx = pytest.importorskip("httpx", reason="needs the serve extra: pip install -e '.[serve]'")

from fakejax.serve import load  # pylint: disable=g-import-not-at-top

# An end-to-end chain: a real server process and HTTP clients, the whole module (make test-slow).
pytestmark = pytest.mark.slow

MAX_BODY, MAX_IMAGES, MAX_PIXELS = 300_000, 3, 1_000_000
SIZES = ((32, 32), (48, 64))  # Few image sizes: each one is compiled once by the server.


@pytest.fixture(scope="module")
def server(tiny_run):
  s = load.start(tiny_run, ["--max_batch_size", "8", "--max_body_bytes", str(MAX_BODY),
                            "--max_images", str(MAX_IMAGES), "--max_pixels", str(MAX_PIXELS)])
  yield s
  assert load.stop(s), f"the server did not stop cleanly on SIGTERM: {load.log_tail(s.log)}"


@pytest.fixture(scope="module")
def client(server):
  with httpx.Client(base_url=server.url, timeout=120) as c:
    yield c


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
  """{name: path} of test images: each size as PNG and JPEG."""
  folder = tmp_path_factory.mktemp("serve_images")
  paths = {}
  for name, blob in load.good_files(SIZES).items():
    paths[name] = str(folder / name)
    with open(paths[name], "wb") as f:
      f.write(blob)
  return paths


def _read(path):
  with open(path, "rb") as f:
    return f.read()


def _still_serving(client, image_files):
  name, path = next(iter(image_files.items()))
  r = client.post("/v1/detect", content=_read(path), headers={"content-type": "image/png"})
  assert r.status_code == 200, r.text


def test_served_scores_equal_predict(client, tiny_run, image_files):
  from fakejax import runs  # pylint: disable=g-import-not-at-top
  from fakejax import predict  # pylint: disable=g-import-not-at-top
  names = sorted(image_files)
  run = runs.Run(tiny_run)
  rows = predict.predict(run, [image_files[n] for n in names], run.view("auto"), run.config.threshold)
  # Several files in one multipart request, and each file alone as raw bytes.
  r = client.post("/v1/detect", files=[("images", (n, _read(image_files[n]))) for n in names[:3]])
  assert r.status_code == 200, r.text
  served = {res["filename"]: res for res in r.json()["results"]}
  for n in names:
    if n not in served:
      r = client.post("/v1/detect", content=_read(image_files[n]),
                      headers={"content-type": "application/octet-stream"})
      assert r.status_code == 200, r.text
      served[n] = r.json()["results"][0]
  for n, row in zip(names, rows):
    got = served[n]
    # predict writes 6 decimals; XLA:CPU moves a score in the 7th digit with its batch row.
    assert got["p_fake"] == pytest.approx(float(row["p_fake"]), abs=1e-6), n
    assert (got["label"], got["view"], got["n_patches"], got["mode"]) == (
        row["label"], row["view"], row["n_patches"], row["mode"]), n
    assert got["probabilities"]["fake"] == pytest.approx(got["p_fake"])


def test_concurrent_requests_each_get_their_own_answer(client, image_files):
  names = sorted(image_files)
  alone = {n: client.post("/v1/detect", files={"image": (n, _read(image_files[n]))}).json()
           for n in names}

  def ask(n):
    return client.post("/v1/detect", files={"image": (n, _read(image_files[n]))}).json()

  with concurrent.futures.ThreadPoolExecutor(8) as pool:  # Batched together by the server.
    answers = list(pool.map(ask, names * 4))
  for n, a in zip(names * 4, answers):
    assert a["results"][0]["filename"] == n
    assert a["results"][0]["p_fake"] == pytest.approx(alone[n]["results"][0]["p_fake"], rel=1e-5), n


def test_explain_adds_a_gradcam_overlay(client, image_files):
  name = sorted(image_files)[0]
  blob = _read(image_files[name])
  plain = client.post("/v1/detect", files={"image": (name, blob)}).json()["results"][0]
  r = client.post("/v1/detect", params={"explain": "true"}, files={"image": (name, blob)})
  assert r.status_code == 200, r.text
  got = r.json()["results"][0]
  assert got["p_fake"] == plain["p_fake"] and "gradcam_png" not in plain
  assert got["gradcam_class"] == got["label"] and got["gradcam_layer"]
  with Image.open(io.BytesIO(base64.b64decode(got["gradcam_png"]))) as im:
    assert (im.format, im.size) == ("PNG", (got["width"], got["height"]))


def test_model_health_metrics_page(client):
  assert client.get("/healthz").status_code == 200
  m = client.get("/v1/model").json()
  assert (m["architecture"], m["classes"], m["image_size"], m["task"]) == (
      "xception", ["real", "fake"], 32, "binary")
  assert m["checkpoint"]["which"] == "best" and m["checkpoint"]["step"] == 2
  assert "accuracy" in m["validation"]["metrics"] and m["training"]["dataset"]
  assert m["limits"]["max_images"] == MAX_IMAGES and m["explain"] is True
  text = client.get("/metrics").text
  for name in ("fakejax_serve_requests_total", "fakejax_serve_errors_total",
               "fakejax_serve_batch_requests_bucket", "fakejax_serve_batch_images_bucket",
               "fakejax_serve_request_seconds_bucket"):
    assert name in text, name
  page = client.get("/")
  assert page.headers["content-type"].startswith("text/html")
  assert "Drop images" in page.text and "://" not in page.text  # Offline: no network assets.
  assert client.get("/info").status_code == 404  # LitServe's own routes are not exposed.


def _multipart(*parts):
  return {"files": [("images", p) for p in parts]}


def _bad_cases():
  png = load.encode(load.test_image(64, 64, 7), "PNG")
  bad = {name: (blob, ctype, status) for name, blob, ctype, status in load.bad_files()}
  raw = lambda blob, ctype="image/png": {"content": blob, "headers": {"content-type": ctype}}  # noqa: E731
  return {
      "empty": (raw(b""), 400, "empty"),
      "not_an_image": (raw(bad["notes.txt"][0]), 422, "not_an_image"),
      "truncated": (raw(bad["truncated.png"][0]), 422, "undecodable"),
      "bomb": (raw(load.bomb_png(2000)), 413, "too_many_pixels"),
      "too_small": (raw(bad["tiny.png"][0]), 422, "too_small"),
      "wrong_content_type": (raw(png, "application/json"), 415, "unsupported_media_type"),
      "no_content_type": ({"content": png}, 415, "unsupported_media_type"),
      "huge_body": (raw(b"\0" * (MAX_BODY + 1)), 413, "body_too_large"),
      "huge_chunked_body": (raw(iter([b"\0" * 100_000] * 4)), 413, "body_too_large"),
      "too_many_images": (_multipart(*[(f"{i}.png", png) for i in range(MAX_IMAGES + 1)]), 413,
                          "too_many_images"),
      "one_bad_among_good": (_multipart(("good.png", png), ("bad.png", bad["truncated.png"][0])), 422,
                             "undecodable"),
      "multipart_without_files": (raw(b'--x\r\nContent-Disposition: form-data; name="note"\r\n\r\n'
                                      b"hello\r\n--x--\r\n", "multipart/form-data; boundary=x"),
                                  400, "no_images"),
      "malformed_multipart": (raw(b"--x\r\n", "multipart/form-data"), 400, "bad_multipart"),
      "bad_explain_value": ({**raw(png), "params": {"explain": "maybe"}}, 400, "bad_parameter"),
  }


@pytest.mark.parametrize("case", sorted(_bad_cases()))
def test_bad_input_gets_4xx_json_and_server_keeps_serving(client, image_files, case):
  request, status, kind = _bad_cases()[case]
  r = client.post("/v1/detect", **request)
  assert r.status_code == status, r.text
  body = r.json()
  assert body["detail"]
  if kind:
    assert body["error"] == kind, body
  if case == "one_bad_among_good":
    assert [(b["index"], b["filename"]) for b in body["images"]] == [(1, "bad.png")]
  _still_serving(client, image_files)


def test_errors_are_counted_by_kind(client):
  client.post("/v1/detect", content=b"", headers={"content-type": "image/png"})
  text = client.get("/metrics").text
  assert 'fakejax_serve_errors_total{kind="empty"}' in text
  assert 'fakejax_serve_requests_total{status="400"}' in text


def test_load_smoke(server):
  res = load.run_load(server.url, clients=4, seconds=2, pgid=server.proc.pid, sizes=SIZES)
  assert res["ok_requests"] > 0 and res["5xx"] == 0 and res["mismatches"] == 0, res
  assert res["rss_mib"]["max"] > 0


def test_page_in_headless_chromium(server, image_files, tmp_path):
  chromium = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium")
                                          else None)
  if not chromium:
    pytest.skip("no chromium binary (Debian: apt-get install chromium; .ci/run installs it)")
  sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (the test extra)")
  good = sorted(image_files)[0]
  bad = tmp_path / "broken.png"
  bad.write_bytes(b"not an image at all")
  with httpx.Client(base_url=server.url, timeout=120) as c:
    expected = c.post("/v1/detect", files={"image": (good, _read(image_files[good]))}).json()
  with sync_api.sync_playwright() as p:
    browser = p.chromium.launch(executable_path=chromium, headless=True)
    try:
      page = browser.new_page(viewport={"width": 1000, "height": 700})
      page.goto(server.url + "/")
      page.wait_for_function("document.getElementById('model').textContent.includes('xception')")
      page.check("#explain")  # Enabled by the model card: this build has fakejax.explain.
      page.set_input_files("#files", [image_files[good], str(bad)])
      page.wait_for_selector(f'.card[data-name="{good}"][data-status="done"]')
      page.wait_for_selector('.card[data-name="broken.png"][data-status="error"]')
      card = page.locator(f'.card[data-name="{good}"]')
      shown = float(card.locator(".pfake").get_attribute("data-p-fake"))
      assert shown == expected["results"][0]["p_fake"]
      assert card.locator(".label").inner_text().lower() == expected["results"][0]["label"]
      assert card.locator("img.overlay").is_visible()  # The Grad-CAM map over the thumbnail.
      assert "not an image" in page.locator('.card[data-name="broken.png"] .error').inner_text()
      with page.expect_download() as download:
        page.click("#csv")
      csv_text = open(download.value.path()).read().splitlines()
      assert csv_text[0].startswith("filename,p_fake,label")
      assert any(line.startswith(f"{good},{shown}") for line in csv_text[1:]), csv_text
      page.screenshot(path=os.environ.get("FAKEJAX_SCREENSHOT", str(tmp_path / "page.png")),
                      full_page=True)
    finally:
      browser.close()


def test_cli_refuses_a_folder_that_is_not_a_run(tmp_path):
  r = subprocess.run([sys.executable, "-m", "fakejax.serve", "--workdir", str(tmp_path)],
                     capture_output=True, text=True, timeout=120)
  assert r.returncode != 0
  assert r.stderr.strip().splitlines()[-1].endswith("is not a fakejax run (no run.json); train one "
                                                     "with `python -m fakejax.train`")
