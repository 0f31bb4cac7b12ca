"""Folder layouts of published datasets, each one declared as path patterns.

A pattern is matched against the folders of an image's path (the file name left out):
  {split}     a split folder (train / val / test; 'valid', 'validation' count as val)
  {label}     a real/fake folder (by default 0_real, real, nature / 1_fake, fake, ai)
  {source}    the generator (for real images: the folder their fakes pair with)
  {category}  the content category
  {class}     an attribution class (one folder per generator, plus 'real')
  {*}         any one folder, ignored
  **          any number of further folders (they become the category)
`{split:test}` restricts a split placeholder. A layout applies when every image of the tree
matches one of its patterns; the first layout of LAYOUTS that applies is chosen by `auto`.
The general rule covers trees nobody listed: a label folder anywhere, a split folder anywhere
(else a seeded hash split), the source and category from the other folders.
"""

import collections
import dataclasses
import hashlib
import os
import sys

import numpy as np

from fakejax import cli

SPLITS = ("train", "val", "test")
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
REAL, FAKE = "real", "fake"
REAL_NAMES = ("0_real", "real", "nature")
FAKE_NAMES = ("1_fake", "fake", "ai")
TRAIN_SOURCE = object()  # In a Layout pattern: the generator named by Names.train_source.
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")


class LayoutError(cli.UserError):
  """The folder tree does not have the expected layout."""


@dataclasses.dataclass(frozen=True)
class Layout:
  """One folder convention.

  Attributes:
    name: what --layout calls it.
    patterns: path patterns (module docstring), or (pattern, {role: value}) for a pattern that
      also sets roles its folders do not give (e.g. the generator of a train split whose
      folders are content categories; TRAIN_SOURCE stands for Names.train_source).
    help: one line for errors and --help.
    no_split: where images without a split folder go: 'hash' (seeded split) or 'test'.
  """
  name: str
  patterns: tuple
  help: str
  no_split: str = "hash"


LAYOUT_RULES = (
    Layout("cnndetection",
           (("{split:train,val}/{category}/{label}", {"source": TRAIN_SOURCE}),
            "{split:test}/{source}/{label}", "{split:test}/{source}/{category}/{label}",
            "{split}/{label}"),
           "ROOT/{train,val}/<category>/{0_real,1_fake}/*, ROOT/test/<generator>[/<category>]/{0_real,1_fake}/* "
           "(Wang et al. 2020; the train/val generator is --train_source, default progan)"),
    Layout("genimage", ("{source}/{split}/{label}", "{source}/{*}/{split}/{label}"),
           "ROOT/<generator>/[<subfolder>/]{train,val}/{ai,nature}/* (GenImage)"),
    Layout("universalfakedetect", ("{source}/{label}",),
           "ROOT/<generator>/1_fake/* beside ROOT/<real set>/0_real/*, all test; pair them with --pair "
           "(Ojha et al. 2023)", no_split="test"),
    Layout("binary", ("{label}/**",), "ROOT/{real,fake}/**/* (split by a seeded hash of the path)"),
    Layout("attribution", ("{split}/{class}/**",),
           "ROOT/{train,val,test}/<class>/* (one folder per class, e.g. real, stylegan, pggan)"),
)
GENERAL = "general"
LAYOUTS = tuple(l.name for l in LAYOUT_RULES) + (GENERAL,)
LAYOUT_HELP = {**{l.name: l.help for l in LAYOUT_RULES},
               GENERAL: "a {0_real,real,nature} / {1_fake,fake,ai} folder anywhere, a {train,val,test} "
                        "folder anywhere (else a seeded hash split); generator and category from the "
                        "folders between"}


@dataclasses.dataclass(slots=True)
class Item:
  """One image file to put in a dataset (slots, names shared: a build holds one per image)."""
  path: str  # Relative to the root.
  split: str
  class_name: str
  source: str  # Generator name, or 'real'.
  category: str = ""
  group: str = ""  # Real images: the generator folder (or declared set) they pair with.

  def __post_init__(self):
    for k in ("split", "class_name", "source", "category", "group"):
      setattr(self, k, sys.intern(getattr(self, k)))


@dataclasses.dataclass(frozen=True)
class Names:
  """The folder names that mean real, fake and the splits."""
  real: tuple = REAL_NAMES
  fake: tuple = FAKE_NAMES
  train_source: str = "progan"

  def label(self, part):
    return REAL if part in self.real else FAKE if part in self.fake else None


def walk_images(root):
  """The image files below root, folder by folder, and the other (ignored) files.

  Hidden files and folders (.DS_Store, .ipynb_checkpoints) are skipped. Folders come in
  os.walk's order with sorted sub-folders, names sorted within a folder.

  Returns:
    ([(folder, names)], others): `folder` relative to root ('' for root itself), `names` the
    folder's image file names joined by '\\0' (one string a folder: a tree of 720k files stays
    a few tens of MB); `others` the relative paths of the other files.
  """
  folders, others = [], []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    folder = os.path.relpath(dirpath, root)
    folder = "" if folder == "." else folder
    names = [f for f in sorted(filenames) if not f.startswith(".")]
    others += [os.path.join(folder, f) for f in names if not f.lower().endswith(IMAGE_EXTS)]
    names = [f for f in names if f.lower().endswith(IMAGE_EXTS)]
    if names:
      folders.append((folder, "\0".join(names)))
  return folders, others


def hash_split(rel_path, fractions, seed):
  """Deterministic split of a path from a seeded hash: the same file, the same split."""
  h = hashlib.sha256(f"{seed}:{rel_path}".encode()).digest()
  u = int.from_bytes(h[:8], "little") / 2**64
  edges = np.cumsum(fractions) / np.sum(fractions)
  return SPLITS[min(int(np.searchsorted(edges, u, side="right")), len(SPLITS) - 1)]


def _match(pattern, parts, names):
  """{role: value} when the folders `parts` match `pattern`, else None."""
  toks = pattern.split("/")
  rest = toks[-1] == "**"
  if rest:
    toks = toks[:-1]
  if len(parts) < len(toks) or (not rest and len(parts) != len(toks)):
    return None
  out = {}
  for tok, part in zip(toks, parts):
    role, _, allowed = tok.strip("{}").partition(":")
    if role == "split":
      split = SPLIT_NAMES.get(part.lower())
      if split is None or (allowed and split not in allowed.split(",")):
        return None
      out["split"] = split
    elif role == "label":
      if names.label(part) is None:
        return None
      out["label"] = names.label(part)
    elif part.lower() in SPLIT_NAMES or (role != "class" and names.label(part) is not None):
      return None  # A split or label folder where a name is expected: another pattern's case.
    elif role != "*":
      out[role] = part
  if rest and len(parts) > len(toks):
    if any(p.lower() in SPLIT_NAMES or names.label(p) is not None for p in parts[len(toks):]):
      return None
    extra = "/".join(parts[len(toks):])
    out["category"] = f"{out['category']}/{extra}" if out.get("category") else extra
  return out


def _general(parts, names):
  """The general rule's roles for the folders of one path, or the reason it is ambiguous."""
  splits = [SPLIT_NAMES[p.lower()] for p in parts if p.lower() in SPLIT_NAMES]
  labels = [names.label(p) for p in parts if names.label(p) is not None]
  if not labels:
    return None, "no real/fake folder"
  if len(set(labels)) > 1:
    return None, "both a real and a fake folder"
  if len(set(splits)) > 1:
    return None, "several split folders"
  other = [p for p in parts if p.lower() not in SPLIT_NAMES and names.label(p) is None]
  out = {"label": labels[0], **({"split": splits[0]} if splits else {})}
  if other:
    out["source"] = other[0]
  if len(other) > 1:
    out["category"] = "/".join(other[1:])
  return out, ""


def _first(folder, names):
  """The relative path of a folder's first image (errors name an image, not a folder)."""
  return os.path.join(folder, names.split("\0", 1)[0])


def _classify(layout, folders, names):
  """{folder: roles} if every image matches `layout` (roles depend on the folders only), else
  (None, [(path, why)] of the misfits: the first image of each folder that fits no rule)."""
  out, misfits = {}, []
  patterns = () if layout == GENERAL else [p if isinstance(p, tuple) else (p, {}) for p in layout.patterns]
  for folder, files in folders:
    parts = folder.split(os.sep) if folder else []
    if layout == GENERAL:
      roles, why = _general(parts, names)
    else:
      roles, why = None, "matches none of " + ", ".join(p for p, _ in patterns)
      for pattern, fixed in patterns:
        roles = _match(pattern, parts, names)
        if roles is not None:
          roles.update({k: names.train_source if v is TRAIN_SOURCE else v for k, v in fixed.items()})
          break
    if roles is None:
      misfits.append((_first(folder, files), why))
      if len(misfits) >= 5:
        break
    else:
      out[folder] = roles
  if layout == GENERAL and not misfits:
    with_split = [(f, n) for f, n in folders if "split" in out[f]]
    if with_split and len(with_split) < len(folders):
      without = next((f, n) for f, n in folders if "split" not in out[f])
      misfits = [(_first(*with_split[0]), "has a split folder"),
                 (_first(*without), "has none: which split is it?")]
  return (out, []) if not misfits else (None, misfits)


def _summary_of_tree(root, folders):
  """A few lines showing what the tree holds (for errors)."""
  tops = collections.Counter()
  for folder, files in folders:
    tops["/".join(folder.split(os.sep)[:3]) if folder else ""] += files.count("\0") + 1
  lines = [f"  {d or '.'}/: {n} image(s)" for d, n in sorted(tops.items())[:12]]
  if len(tops) > 12:
    lines.append(f"  ... and {len(tops) - 12} more folder(s)")
  return "\n".join(lines)


def _known():
  return "\n".join(f"  {k}: {v}" for k, v in LAYOUT_HELP.items())


def scan(root, layout="auto", fractions=(0.56, 0.24, 0.20), seed=0, names=Names()):
  """Lists the files of an image-folder dataset.

  Args:
    root: the folder.
    layout: one of LAYOUTS, or 'auto'.
    fractions: train/val/test fractions of the seeded hash split (images without a split folder).
    seed: seed of the hash split.
    names: the folder names that mean real and fake (and the CNNDetection train generator).

  Returns:
    (layout name, class names, Items (iterating gives `Item`s), list of ignored non-image
    files).

  Raises:
    LayoutError: naming the folder, what was found and the layouts known.
  """
  if not os.path.isdir(root):
    raise LayoutError(f"{root} is not a folder")
  images, others = walk_images(root)
  if not images:
    raise LayoutError(f"No image files below {root}; known layouts:\n{_known()}")
  if layout not in ("auto",) + LAYOUTS:
    raise LayoutError(f"Unknown layout {layout!r}; known: auto, {', '.join(LAYOUTS)}")
  candidates = LAYOUT_RULES + (GENERAL,) if layout == "auto" else [
      next((l for l in LAYOUT_RULES if l.name == layout), GENERAL)]
  roles, misfits = None, []
  for cand in candidates:
    roles, misfits = _classify(cand, images, names)
    if roles is not None:
      rule = cand
      break
  if roles is None:
    what = (f"does not have the '{layout}' layout: {LAYOUT_HELP[layout]}" if layout != "auto"
            else "matches no known layout")
    raise LayoutError(
        f"{root} {what}.\nFound:\n{_summary_of_tree(root, images)}\nImages that fit no rule:\n"
        + "\n".join(f"  {p}: {why}" for p, why in misfits) + f"\nKnown layouts:\n{_known()}")
  name = GENERAL if rule == GENERAL else rule.name
  no_split = "hash" if rule == GENERAL else rule.no_split
  items = Items()
  for folder, files in images:
    r = roles[folder]
    if "class" in r:  # Attribution: the folder is the class.
      cls = r["class"]
      fields = (cls, cls, r.get("category", ""), "" if cls == REAL else cls)
    elif r["label"] == REAL:
      fields = (REAL, REAL, r.get("category", ""), r.get("source", ""))
    else:
      src = r.get("source", FAKE)
      fields = (src, src, r.get("category", ""), src)
    if r.get("split") or no_split != "hash":
      splits = r.get("split") or no_split
    else:
      splits = bytes(SPLITS.index(hash_split(os.path.join(folder, f), fractions, seed))
                     for f in file_names(files))
    items.add_folder(folder, files, splits, fields)
  has_real = name != "attribution" or REAL in items.class_names
  class_names = (REAL,) * has_real + tuple(sorted(items.class_names - {REAL}))
  return name, class_names, items, others


def file_names(files):
  """The names of a folder's '\\0'-joined string one at a time (a list of 360k names would hold
  ~25 MB while a split is written)."""
  start = 0
  while (end := files.find("\0", start)) >= 0:
    yield files[start:end]
    start = end + 1
  yield files[start:]


class Items:
  """The images of a scan, compact: per folder its roles and its file names (one string), per
  image one byte (its split) where a hash split decides it. Iterating makes the `Item`s as it
  goes, in the order of the tree."""

  def __init__(self):
    self._folders = []  # (folder, names joined by '\0', split or bytes of split codes, fields).
    self._len = 0
    self.class_names, self.counts = set(), collections.Counter()

  def add_folder(self, folder, files, splits, fields):
    """`splits`: the folder's split, or one split code (SPLITS.index) a file; `fields`:
    (class_name, source, category, group) of every file."""
    n = files.count("\0") + 1
    self._folders.append((folder, files, splits, tuple(fields)))
    self._len += n
    self.class_names.add(fields[0])
    if isinstance(splits, str):
      self.counts[splits] += n
    else:
      self.counts.update({SPLITS[code]: k for code, k in collections.Counter(splits).items()})

  def __len__(self):
    return self._len

  def __iter__(self):
    return self.in_split(None)

  def in_split(self, split):
    """The Items of one split (None: all), in the order of the tree."""
    for folder, files, splits, fields in self._folders:
      if isinstance(splits, str):
        if split in (None, splits):
          yield from (Item(os.path.join(folder, f), splits, *fields) for f in file_names(files))
        continue
      for f, code in zip(file_names(files), splits):
        if split is None or SPLITS[code] == split:
          yield Item(os.path.join(folder, f), SPLITS[code], *fields)

  def groups(self, class_name):
    """The pairing groups of one class's folders."""
    return {fields[3] for _, _, _, fields in self._folders if fields[0] == class_name}


def parse_pairs(specs):
  """['guided=imagenet', '*=laion'] -> {'guided': ['imagenet'], '*': ['laion']}."""
  pairs = {}
  for spec in specs:
    gen, sep, groups = spec.partition("=")
    if not sep or not gen or not groups:
      raise LayoutError(f"--pair {spec!r}: expected GENERATOR=REAL_FOLDER[,REAL_FOLDER] "
                        "(GENERATOR may be '*')")
    pairs.setdefault(gen.strip(), []).extend(g.strip() for g in groups.split(","))
  return pairs
