r"""Looking inside a detector: Grad-CAM maps, and the spectra of up-sampling fingerprints.

  python -m fakejax.explain --workdir RUN photos/ a.png              # maps of the predicted class
  python -m fakejax.explain --workdir RUN --class fake --layer block3 photos/
  python -m fakejax.explain --workdir RUN --dataset data/cnndet_mirror --split test --per_class 16
  python -m fakejax.explain --workdir RUN --list_layers
  python -m fakejax.explain --spectrum --dataset data/cnndet_mirror --split test
  python -m fakejax.explain --spectrum --dataset synthetic          # the benchmark `make train` uses
  python -m fakejax.explain --spectrum --dataset photo              # the photo benchmark

Grad-CAM (Selvaraju et al. 2017): for the class c and the activation A (h x w x K) of a layer,
the channel weights are the spatially averaged gradients a_k = mean_ij d y_c / d A_ij,k of the
class logit, the map is ReLU(sum_k a_k A_k), bilinearly up-sampled to the input (half-pixel
centres) and scaled to a maximum of 1. The class is the predicted one (p_fake >= the run's
threshold for binary runs, the arg-max otherwise) or the one named by --class. The gradient
with respect to the activation comes from the models' `taps`: the chosen layer returns
A + 0 and the logits are differentiated with respect to that 0. One jitted function per batch
shape (jit's cache), batches from the one evaluation path (fakejax.scoring), the 'full' view
(the training crop) by default or --mode whole.

Layer names (--list_layers prints them with their shapes). The default is the model's
CAM_LAYER. Xception uses the PyTorch names (Cadene's pretrainedmodels / timm), as the attribution
study did; in Keras' names:

| fakejax / PyTorch | Keras (keras.applications.Xception)      | shape at 299 px |
|-------------------|------------------------------------------|-----------------|
| conv1, conv2      | block1_conv1_act, block1_conv2_act       | 149x149x32, 147x147x64 |
| block1..block3    | block2..block4 (entry flow, the add)     | 74x74x128 .. 19x19x728 |
| block4..block11   | block5..block12 (middle flow)            | 19x19x728 |
| block12 (default) | block13 (exit flow, 728->1024, the add)  | 10x10x1024 |
| conv3, conv4      | block14_sepconv1_act, block14_sepconv2_act | 10x10x1536, 10x10x2048 |

so PyTorch's blockN is Keras' block(N+1) for N = 1..12; the study's "12th block" is Keras'
block13. ResNet: torchvision's names (layer1..layer4, default layer4; layer4.2 is a block);
MobileNetV2: 'last' (the 1x1 conv to 1280); DeepFD: d1.block5 (D1's last stage); BiT: block4.

Spectra (--spectrum): per class (the dataset's 'source': real and each generator), the mean over
images of 20 log10 |FFT| of the high-pass residual of the centre crop's grey level (mean of R, G,
B): image minus its 3x3 binomial blur ([1 2 1]/4 in each direction, reflect-padded; response
1 - cos^2(pi fy) cos^2(pi fx), 1 at the Nyquist frequencies). The blur is linear on purpose: a 3x3
median keeps a +-a checkerboard unchanged (5 of the 9 pixels of any window share the centre's
sign), so a median residual removes exactly the checkerboard of transposed convolutions, while
it doubles period-2 stripes (6 of 9 have the other sign). The FFT is orthonormal (white noise of
std s reads 20 log10 s everywhere), DC in the centre. Images are cropped, never resampled
(resampling changes the fingerprint).

With --workdir, Grad-CAM of the named images, or else of --per_class images of each class
(source) of --dataset (default: the run's dataset); --spectrum adds the spectra of the dataset
(and needs no run). Outputs in --out (default RUN/explain, or ./explain without a run):
gradcam_001.png, ... (rows of image / map / overlay with p_fake, the verdict and the map's class),
for a dataset gradcam_<class>.png (its first --rows images) and gradcam_mean.png (the mean map
of each class, and each mean minus the mean over classes; maps in gradcam_mean.npz),
spectra.png (mean spectrum per class, and its difference from the real class),
spectra_profile.png (azimuthal averages), spectra.npz, and explain.json (per image: p_fake,
verdict, map class, PNG).
"""

import io
import json
import os

from absl import flags
from flax import nnx
import jax
import jax.numpy as jnp
from matplotlib import colormaps
import numpy as np
from PIL import Image
import tqdm

from fakejax import cli
from fakejax import datasets
from fakejax import models
from fakejax import runs
from fakejax import scoring
from fakejax import processes
from fakejax.models import spectral

if __name__ == "__main__":
  # Defined only when this file is the program, so other modules (serve) can import its functions.
  _F = cli.define_run_flags()
  _MODE = cli.define_mode_flag("explain", ("full", "whole"))
  _LAYER = flags.DEFINE_string("layer", None, "Layer of the maps (default: the model's CAM_LAYER).")
  _CLASS = flags.DEFINE_string("class", None, "Class of the maps, by name or index (default: predicted).")
  _DATASET = flags.DEFINE_string("dataset", None, "Prepared dataset folder, or 'synthetic' or 'photo' (default: "
                                 "the run's, when no image is named).")
  _SPLIT = flags.DEFINE_string("split", "test", "Split of --dataset.")
  _PER_CLASS = flags.DEFINE_integer("per_class", 16, "Grad-CAM: images per class (source) of --dataset.")
  _ROWS = flags.DEFINE_integer("rows", 8, "Images per grid PNG.")
  _BATCH = flags.DEFINE_integer("batch_size", 0, "Global batch (default: the run's eval batch).")
  _SEED = flags.DEFINE_integer("seed", 0, "Which images of each class are drawn.")
  _LIST = flags.DEFINE_bool("list_layers", False, "Print the layer names and output shapes, then exit.")
  _SPECTRUM = flags.DEFINE_bool("spectrum", False, "Mean residual spectra per class of --dataset.")
  _SPEC_N = flags.DEFINE_integer("spectrum_per_class", 256, "Spectra: images per class.")
  _SPEC_SIZE = flags.DEFINE_integer("spectrum_size", 0, "Spectra: centre-crop side (0: the smallest "
                                    "image side among those drawn, at most 256).")
  _OUT = flags.DEFINE_string("out", None, "Output folder (default: RUN/explain, or ./explain).")
  cli.define_distributed_flags()


# ---------------------------------------------------------------------------
# Grad-CAM.
# ---------------------------------------------------------------------------
def resolve_layer(model, layer=None):
  """`layer`, or the model's CAM_LAYER when None, checked against the model's layer names.

  Raises:
    cli.UserError: naming the known layers.
  """
  names = models.layer_names(model)
  layer = layer or model.CAM_LAYER
  if layer not in names:
    raise cli.UserError(f"Unknown layer {layer!r} for {type(model).__name__}; known: {', '.join(names)}")
  return layer


def resolve_class(class_names, c):
  """Index of a class given by name or index (None stays None: the predicted class).

  Raises:
    cli.UserError: naming the classes.
  """
  if c is None:
    return None
  if str(c) in class_names:
    return class_names.index(str(c))
  if str(c).lstrip("-").isdigit() and 0 <= int(c) < len(class_names):
    return int(c)
  raise cli.UserError(f"Unknown class {c!r}; the run's classes are "
                      + ", ".join(f"{i}={n}" for i, n in enumerate(class_names)))


def layer_table(model, image_size):
  """Text of --list_layers: each layer name with its output shape (H x W x C), default marked."""
  default = model.CAM_LAYER  # An instance attribute where it depends on the architecture.
  lines = [f"{type(model).__name__} at {image_size} px:"]
  for name, shape in models.layer_shapes(model, image_size):
    lines.append(f"  {name:<12} {'x'.join(str(s) for s in shape[1:])}"
                 + ("   (default Grad-CAM layer)" if name == default else ""))
  return "\n".join(lines)


def _activation_shape(model, x, layer):
  """Shape and dtype of `layer`'s activation for input x (traced, nothing computed)."""
  def act(x):
    found = []
    model(x, taps=lambda name, a: found.append(a) or a if name == layer else a)
    if not found:
      raise ValueError(f"layer {layer!r} is not one of {models.layer_names(model)}")
    return found[0]
  return jax.eval_shape(act, x)


def predicted_class(logits, threshold=0.5):
  """The class a verdict gives (scoring.verdict): binary p_fake >= threshold, else arg-max."""
  if logits.shape[-1] == 2:
    return (jax.nn.softmax(logits.astype(jnp.float32), -1)[:, 1] >= threshold).astype(jnp.int32)
  return jnp.argmax(logits, -1).astype(jnp.int32)


def gradcam(model, x, layer, target=None, threshold=0.5, valid=None):
  """Grad-CAM of a batch, at the layer's resolution (traceable; the model in eval mode).

  One forward and one backward pass for the whole batch: the cotangent is one-hot in each row's
  class, and a row's logits depend on its own input only (eval mode), so the backward pass gives
  each image's own gradient. A single-logit head (logits [0, z]: NPR, CNNDetection, UnivFD) maps
  z for 'fake' and -z for 'real'.

  Args:
    model: an nnx model with the `taps` API (fakejax.models).
    x: (B, H, W, 3) preprocessed images.
    layer: a name of models.layer_names(model).
    target: class index for every image, or None for each image's predicted class.
    threshold: p_fake threshold of the predicted class (binary models).
    valid: optional (B, 2) sizes before padding (the model's global pool masks the rest).

  Returns:
    (logits (B, C) float32, maps (B, h, w) float32 >= 0 unnormalised, class used (B,) int32).
  """
  spec = _activation_shape(model, x, layer)

  def logits_of(delta):
    acts = {}

    def taps(name, a):
      if name != layer:
        return a
      acts["a"] = a
      return a + delta.astype(a.dtype)

    return model(x, taps=taps, valid=valid).astype(jnp.float32), acts["a"]

  delta = jnp.zeros(spec.shape, jnp.float32)
  logits, backward, act = jax.vjp(logits_of, delta, has_aux=True)
  cls = (predicted_class(logits, threshold) if target is None
         else jnp.full(logits.shape[:1], target, jnp.int32))
  cotangent = jax.nn.one_hot(cls, logits.shape[-1], dtype=logits.dtype)
  if getattr(model, "single_logit", False):  # Logits [0, z]: 'real' is -z's map (0 has no gradient).
    cotangent = cotangent - jax.nn.one_hot(1 - cls, 2, dtype=logits.dtype)
  (grad,) = backward(cotangent)
  weights = grad.mean((1, 2))  # a_k: (B, K)
  maps = jax.nn.relu(jnp.einsum("bhwk,bk->bhw", act.astype(jnp.float32), weights))
  return logits, maps, cls


def upsample(maps, size):
  """(B, h, w) maps -> (B, H, W): bilinear (half-pixel centres), each scaled to a maximum of 1
  (an all-zero map stays zero)."""
  up = jax.image.resize(maps, (maps.shape[0],) + tuple(size), "bilinear")
  peak = up.max((1, 2), keepdims=True)
  return jnp.where(peak > 0, up / jnp.where(peak > 0, peak, 1), 0.0)


def gradcam_forward(spec, layer, target=None, threshold=0.5):
  """The jitted Grad-CAM forward for a scoring.Evaluator: (model state, uint8 images) -> dict.

  Args:
    spec: the run's runs.ModelSpec (eval-mode graph, preprocessing, dtype).
    layer: layer name (resolve_layer).
    target: class index, or None for the predicted class.
    threshold: p_fake threshold of the predicted class (binary runs).

  Returns:
    fn(state, x) -> {'logits': (B, C), 'target': (B,) the class of the map, 'cam': (B, H, W) in
    [0, 1] at the input's size, 'cam_layer': (B, h, w) unnormalised at the layer's size}.
  """
  def outputs(model, x, valid):
    logits, maps, cls = gradcam(model, x, layer, target, threshold, valid)
    return {"logits": logits, "target": cls, "cam": upsample(maps, x.shape[1:3]), "cam_layer": maps}

  return scoring.make_forward(spec.graph, spec.preprocess, spec.dtype, outputs=outputs)


def gradcam_evaluator(run, layer=None, target=None, batch_size=0, threshold=None):
  """(a scoring.Evaluator whose Results carry the maps, the layer name) for a loaded runs.Run.

  Args:
    run: a runs.Run.
    layer: layer name (default: the model's CAM_LAYER).
    target: class index of every map, or None for each image's verdict.
    batch_size: global batch (default: the run's eval batch).
    threshold: p_fake threshold of the verdict whose class is mapped (default: the run's); pass
      the one given to Evaluator.run if it differs.

  Returns:
    (Evaluator, layer name). Result.outputs['cam'][0] is the map (H, W) in [0, 1] of the view's
    input (model_input), ['target'][0] its class, ['cam_layer'][0] the map at the layer's size.
  """
  layer = resolve_layer(nnx.merge(run.model_def, run.state), layer)
  fwd = gradcam_forward(run.spec, layer, target, run.config.threshold if threshold is None else threshold)
  ev = runs.evaluator_of(run.config, lambda x, valid=None: fwd(run.state, x, valid), run.mesh, run.task,
                         batch_size=batch_size or run.batch)
  return ev, layer


def model_input(view, img, image_id=0):
  """The pixels the model saw for a 'full' or 'whole' view of a decoded image (the map's frame)."""
  return view.cut(img, image_id)[0][0]


def resize_map(cam, shape):
  """A float map resized (bilinear) to (H, W) on the host."""
  cam = np.asarray(cam, np.float32)
  if cam.shape == tuple(shape):
    return cam
  return np.asarray(Image.fromarray(cam, "F").resize((int(shape[1]), int(shape[0])), Image.BILINEAR))


def overlay(img, cam, alpha=0.5):
  """The image with the map over it (jet colours, `alpha` of the map): uint8 HxWx3.

  Args:
    img: uint8 HxWx3, the model's input (model_input).
    cam: map in [0, 1], any size (resized to the image).
    alpha: weight of the colours.
  """
  img = np.asarray(img, np.uint8)
  cam = np.clip(resize_map(cam, img.shape[:2]), 0, 1)
  heat = colormaps["jet"](cam)[..., :3]
  return np.round(255 * ((1 - alpha) * img / 255.0 + alpha * heat)).astype(np.uint8)


def overlay_png(img, cam, alpha=0.5):
  """overlay() encoded as PNG bytes."""
  buf = io.BytesIO()
  Image.fromarray(overlay(img, cam, alpha)).save(buf, format="PNG")
  return buf.getvalue()


# ---------------------------------------------------------------------------
# Spectra of the high-pass residual.
# ---------------------------------------------------------------------------
def log_spectrum(img, size):
  """The residual log-spectrum (models.spectral: the spectral detector's features) of the centre
  size x size crop of an HWC image in its pixel values: (size, size) float64 in dB, DC in the centre."""
  x = jnp.asarray(np.asarray(img, np.float32))[None]
  return np.asarray(spectral.log_spectrum(spectral.residual(x, size))[0], np.float64)


def spectrum_freqs(size):
  """The frequencies (cycles per pixel) of log_spectrum's rows and columns."""
  return np.fft.fftshift(np.fft.fftfreq(size))


def radial_profile(spec):
  """(radius in cycles/pixel, mean of spec over each 1-bin ring) of a centred spectrum
  (Durall et al.'s azimuthal average)."""
  n = spec.shape[0]
  f = spectrum_freqs(n)
  r = np.hypot(f[:, None], f[None, :]) * n
  ring = np.round(r).astype(int)
  total = np.bincount(ring.ravel(), spec.ravel())
  count = np.bincount(ring.ravel())
  keep = count > 0
  return np.arange(len(count))[keep] / n, total[keep] / count[keep]


def pick_per_class(dataset, split, per_class, seed=0, column="source"):
  """{class: record indices}: up to `per_class` records of each value of an index column, a
  seeded draw (the synthetic benchmark is stored category by category), sorted."""
  values = dataset.index(split)[column]
  rng = np.random.default_rng([seed, 2718])
  out = {}
  for c in sorted(set(values.tolist()), key=lambda v: (v != datasets.REAL, v)):
    idx = np.flatnonzero(values == c)
    out[str(c)] = np.sort(rng.choice(idx, min(per_class, len(idx)), replace=False))
  return out


def class_spectra(dataset, split, per_class=256, size=0, seed=0, progress=None):
  """Mean residual spectrum of each class (source) of a dataset split.

  Args:
    dataset: a datasets.Dataset.
    split: its split.
    per_class: images per class (a seeded draw).
    size: centre-crop side; 0 picks the smallest side among the drawn images, at most 256.
    seed: the draw.
    progress: optional callable(number of images done).

  Returns:
    ({class: (mean dB spectrum (size, size), n images)}, size).
  """
  picks = pick_per_class(dataset, split, per_class, seed)
  idx = dataset.index(split)
  if not size:
    size = int(min(256, min(min(idx["height"][i].min(), idx["width"][i].min()) for i in picks.values())))
  src = dataset.source(split)
  out, done = {}, 0
  for c, ids in picks.items():
    total = np.zeros((size, size))
    for i in ids:
      img = dataset.decode(src[int(i)])
      if min(img.shape[:2]) < size:
        raise cli.UserError(f"image {i} of {split} is {img.shape[1]}x{img.shape[0]}, smaller than "
                            f"--spectrum_size {size}")
      total += log_spectrum(img, size)
      done += 1
      if progress:
        progress(done)
    out[c] = (total / max(len(ids), 1), len(ids))
  return out, size


# ---------------------------------------------------------------------------
# The command.
# ---------------------------------------------------------------------------
def open_dataset(name):
  """A prepared dataset folder, or 'synthetic' / 'photo': the default config's benchmark."""
  return datasets.open_named(name)


def _entry(run, r, name, layer):
  """One image's row of explain.json."""
  return {"name": name, "p_fake": r.score, "pred": run.label_name(r.pred),
          "map_class": run.class_names[int(r.outputs["target"][0])]}


def _draw(rows, out, fname, title):
  """One grid PNG of [(explain.json row, model input, map)]; tags each row with the file."""
  from fakejax import report  # pylint: disable=g-import-not-at-top  (matplotlib only when drawing)
  report.plot_gradcam_grid(
      [(f"{e['name']}\np_fake {e['p_fake']:.3f}, {e['pred']}; map of '{e['map_class']}'", img, cam,
        overlay(img, cam)) for e, img, cam in rows], os.path.join(out, fname), title)
  for e, _, _ in rows:
    e["png"] = fname


def _score(ev, sizes, load, view, threshold):
  bar = tqdm.tqdm(total=len(sizes), desc="grad-cam", unit="img", disable=not processes.is_main())
  res = ev.run(sizes, load, view, threshold=threshold, progress=lambda n: bar.update(n - bar.n))
  bar.close()
  return res


def explain_images(run, ev, layer, view, files, out, *, per_png=8):
  """Grad-CAM grids of image files (gradcam_001.png, ...); returns the explain.json rows."""
  sizes, load = scoring.file_reader(files)
  res = _score(ev, sizes, load, view, run.config.threshold)
  if not processes.is_main():
    return []
  rows, drawn = [], []
  for i, (path, r) in enumerate(zip(files, res)):
    if r.error:
      rows.append({"name": path, "error": r.error})
      continue
    rows.append(_entry(run, r, path, layer))
    drawn.append((rows[-1], model_input(view, load(i), i), r.outputs["cam"][0]))
  for p, start in enumerate(range(0, len(drawn), per_png)):
    _draw(drawn[start:start + per_png], out, f"gradcam_{p + 1:03d}.png", f"Grad-CAM at {layer}")
  return rows


def explain_dataset(run, ev, layer, view, dataset, split, *, per_class, out, per_png=8, seed=0):
  """Grad-CAM of `per_class` images of each source of a split: gradcam_<class>.png (the first
  `per_png` of each) and the per-class mean maps (gradcam_mean.png / .npz); returns the
  explain.json rows."""
  from fakejax import report  # pylint: disable=g-import-not-at-top
  picks = pick_per_class(dataset, split, per_class, seed)
  order = [(c, int(i)) for c, ids in picks.items() for i in ids]
  sizes, load = scoring.dataset_reader(dataset, split, np.array([i for _, i in order], int))
  res = _score(ev, sizes, load, view, run.config.threshold)
  if not processes.is_main():
    return []
  crop = run.config.data.image_size
  rows, means = [], []
  for c in picks:
    drawn, maps, layer_maps, preds = [], [], [], []
    for k, ((cc, i), r) in enumerate(zip(order, res)):
      if cc != c:
        continue
      if r.error:
        rows.append({"name": f"{c} #{i}", "error": r.error})
        continue
      rows.append(_entry(run, r, f"{c} #{i}", layer))
      maps.append(resize_map(r.outputs["cam"][0], (crop, crop)))  # 'whole': sizes differ.
      layer_maps.append(r.outputs["cam_layer"][0])
      preds.append(rows[-1]["pred"])
      if len(drawn) < per_png:
        drawn.append((rows[-1], model_input(view, load(k), k), r.outputs["cam"][0]))
    if not maps:
      continue
    _draw(drawn, out, f"gradcam_{c}.png", f"Grad-CAM at {layer}: {c} ({split})")
    top = max(set(preds), key=preds.count)
    note = f"n={len(maps)}, {preds.count(top) / len(preds):.0%} called {top}"
    same = len({m.shape for m in layer_maps}) == 1
    means.append((c, np.mean(maps, 0), note, np.mean(layer_maps, 0) if same else None))
  if means:
    report.plot_class_maps([(c, m, note) for c, m, note, _ in means], os.path.join(out, "gradcam_mean.png"),
                           f"mean Grad-CAM per class at {layer} ({split}, {view.mode} view)")
    extra = ({"layer_maps": np.stack([m[3] for m in means])} if all(m[3] is not None for m in means)
             else {})
    np.savez(os.path.join(out, "gradcam_mean.npz"), classes=np.array([m[0] for m in means]),
             maps=np.stack([m[1] for m in means]), **extra)
  return rows


def spectra(dataset, split, per_class, size, seed, out):
  """spectra.png, spectra_profile.png and spectra.npz of a dataset split; returns the summary."""
  from fakejax import report  # pylint: disable=g-import-not-at-top
  total = sum(len(v) for v in pick_per_class(dataset, split, per_class, seed).values())
  with tqdm.tqdm(total=total, desc="spectra", unit="img") as bar:
    spec, size = class_spectra(dataset, split, per_class, size, seed, lambda n: bar.update(n - bar.n))
  title = f"{os.path.basename(os.path.normpath(dataset.path))} {split}: mean residual spectrum, {size} px"
  report.plot_spectra([(c, s, n) for c, (s, n) in spec.items()], spectrum_freqs(size),
                      os.path.join(out, "spectra.png"), title)
  profiles = [(c, *radial_profile(s)) for c, (s, _) in spec.items()]
  report.plot_spectrum_profiles(profiles, os.path.join(out, "spectra_profile.png"), title)
  np.savez(os.path.join(out, "spectra.npz"), classes=np.array(list(spec)),
           spectra=np.stack([s for s, _ in spec.values()]), freqs=spectrum_freqs(size))
  return {"split": split, "size": size, "n": {c: n for c, (_, n) in spec.items()}}


def main(argv):
  inputs = argv[1:]
  processes.initialize(flags.FLAGS.coordinator_address, flags.FLAGS.num_processes, flags.FLAGS.process_id)
  workdir = _F.workdir.value
  if not workdir and not _SPECTRUM.value:
    raise cli.UserError("--workdir RUN is needed for Grad-CAM and --list_layers (only --spectrum "
                        "runs without one)")
  if inputs and (_DATASET.value or _SPECTRUM.value):
    raise cli.UserError("name image files or --dataset, not both (--spectrum needs a dataset)")
  main_process = processes.is_main()
  run = runs.Run(workdir, _F.checkpoint.value, batch_size=_BATCH.value, threads=_F.threads.value,
                 dtype=_F.dtype.value) if workdir else None
  if _LIST.value:
    if main_process:
      print(layer_table(nnx.merge(run.model_def, run.state), run.config.data.image_size))
    return
  out = _OUT.value or (os.path.join(workdir, "explain") if workdir else "explain")
  dataset_name = _DATASET.value or (run.info["dataset"] if run and not inputs else None)
  if _SPECTRUM.value and not dataset_name:
    raise cli.UserError("--spectrum needs --dataset (a prepared folder, 'synthetic' or 'photo')")
  if main_process:
    os.makedirs(out, exist_ok=True)
  summary = {}
  if run:
    target = resolve_class(run.class_names, _CLASS.value)
    ev, layer = gradcam_evaluator(run, _LAYER.value, target, _BATCH.value, _F.threshold.value)
    view = run.view(_MODE.value, exact_sizes=True)  # Maps over the image's own pixels only.
    if inputs:
      rows = explain_images(run, ev, layer, view, datasets.list_images(inputs), out, per_png=_ROWS.value)
    else:
      rows = explain_dataset(run, ev, layer, view, open_dataset(dataset_name), _SPLIT.value,
                             per_class=_PER_CLASS.value, out=out, per_png=_ROWS.value, seed=_SEED.value)
    summary["gradcam"] = {"layer": layer, "mode": view.mode, "class": _CLASS.value or "predicted",
                          "images": rows}
  if _SPECTRUM.value and main_process:
    summary["spectra"] = spectra(open_dataset(dataset_name), _SPLIT.value, _SPEC_N.value,
                                 _SPEC_SIZE.value, _SEED.value, out)
  if main_process:
    with open(os.path.join(out, "explain.json"), "w") as f:
      json.dump(summary, f, indent=2)
    pngs = sorted(f for f in os.listdir(out) if f.endswith(".png"))
    print(f"{len(pngs)} PNG(s) in {out}: {', '.join(pngs)}")


if __name__ == "__main__":
  cli.run(main, devices="shared")
