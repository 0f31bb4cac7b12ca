r"""The device machine's missing packages, and the device command rehearsed on this CPU.

  python scripts/gpu_wheels.py download                      # make gpu-wheels
  python scripts/gpu_wheels.py rehearse --venv .venv-rehearsal --peer_python .venv-torch/bin/python
                                                             # make gpu-rehearsal

The lent GPU machines reach no registry, and their image (.ci/device-image.txt, from the device
tool's KINDS.md) lacks some of what fakejax imports. `download` fetches exactly those wheels,
.ci/gpu-wheels.txt, for the image's Python 3.12 and x86-64, into .whl/ (git-ignored), and checks
that they and the working tree fit what one device call may carry (64 MiB).

`rehearse` builds a Python 3.12 venv like the image: jax 0.11.2 for the CPU and the image's
packages that fakejax uses at the versions it lists (.ci/rehearsal.txt), and refuses one that
the image does not hold. Then, as the device command does, it installs the .whl/ wheels with
`--no-index --no-deps --target` (no registry) and runs `fakejax.gpu_check --quick` with them on
PYTHONPATH, the PyTorch peer from --peer_python; any error row fails it.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WHEELS = os.path.join(ROOT, ".ci", "gpu-wheels.txt")
IMAGE = os.path.join(ROOT, ".ci", "device-image.txt")
REHEARSAL = os.path.join(ROOT, ".ci", "rehearsal.txt")
WHEEL_DIR = os.path.join(ROOT, ".whl")
CARRY_LIMIT = 64 * 2**20  # What one device call may carry: the working tree and the carried paths.
# The device image's interpreter and platform (the device tool's README gives these pip flags).
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64", "manylinux_2_24_x86_64", "manylinux_2_31_x86_64", "manylinux_2_34_x86_64",
             "manylinux_2_35_x86_64")
ALWAYS_THERE = {"pip", "setuptools", "wheel"}  # In any venv; not what fakejax imports.


def canonical(name):
  """A distribution's name as pip compares them (PEP 503)."""
  return re.sub(r"[-_.]+", "-", name).lower()


def requirements(path):
  """{canonical name: 'name==version' or 'name'} of a requirements-style file."""
  out = {}
  for line in open(path):
    line = line.split("#", 1)[0].strip()
    if line:
      out[canonical(re.split(r"[=<>!~ ]", line, maxsplit=1)[0])] = line
  return out


def tree_bytes():
  """Bytes of what a device call sends besides carried paths: tracked and untracked-not-ignored files."""
  files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, check=True).stdout.split(b"\0")
  return sum(os.path.getsize(os.path.join(ROOT, f.decode())) for f in files
             if f and os.path.isfile(os.path.join(ROOT, f.decode())))


def download():
  wanted = requirements(WHEELS)
  os.makedirs(WHEEL_DIR, exist_ok=True)
  platforms = [a for p in PLATFORMS for a in ("--platform", p)]
  for spec in wanted.values():
    r = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--python-version", "3.12", "--implementation", "cp", *platforms, "-d", WHEEL_DIR,
                        spec], capture_output=True, text=True)
    if r.returncode:  # Published as source only (promise): its pure-Python wheel, built here.
      subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", WHEEL_DIR, spec], check=True)
  installs = lambda f: f.endswith("-none-any.whl") or "-cp312-" in f or "-abi3-" in f
  impure = [f for f in os.listdir(WHEEL_DIR) if not installs(f)]
  if impure:
    sys.exit(f"wheels that would not install on the device's CPython 3.12: {', '.join(impure)}")
  kept = 0
  for f in sorted(os.listdir(WHEEL_DIR)):  # A wheel of an earlier list would travel too.
    name, version = f.split("-")[:2]
    if wanted.get(canonical(name), "").split("==")[-1] != version:
      os.remove(os.path.join(WHEEL_DIR, f))
    else:
      kept += os.path.getsize(os.path.join(WHEEL_DIR, f))
  tree = tree_bytes()
  print(f"{len(os.listdir(WHEEL_DIR))} wheels, {kept / 2**20:.1f} MiB in .whl/; the working tree "
        f"{tree / 2**20:.1f} MiB; together {(kept + tree) / 2**20:.1f} of the {CARRY_LIMIT / 2**20:.0f} MiB a device "
        "call carries")
  if kept + tree > CARRY_LIMIT:
    sys.exit("the wheels and the working tree are over what one device call may carry")


def _python312():
  p = subprocess.run([os.path.join(ROOT, "scripts", "find_python.sh"), "3.12"], capture_output=True,
                     text=True).stdout.strip()
  version = subprocess.run([p, "-c", "import sys; print(sys.version_info[:2] == (3, 12))"], capture_output=True,
                           text=True).stdout.strip() if p else ""
  if version != "True":
    sys.exit("the rehearsal needs Python 3.12 (the device image's); none found (pyenv install 3.12?)")
  return p


def build_venv(venv):
  """A venv like the device image (made once; remade when .ci/rehearsal.txt changes)."""
  stamp = os.path.join(venv, ".rehearsal.txt")
  spec = open(REHEARSAL).read()
  if os.path.exists(stamp) and open(stamp).read() == spec:
    return
  shutil.rmtree(venv, ignore_errors=True)
  subprocess.run([_python312(), "-m", "venv", venv], check=True)
  py = os.path.join(venv, "bin", "python")
  subprocess.run([py, "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
  subprocess.run([py, "-m", "pip", "install", "-q", "-r", REHEARSAL], check=True)
  installed = subprocess.run([py, "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True,
                             check=True).stdout.split()
  image = requirements(IMAGE)
  foreign = sorted(n for n in (canonical(l.split("==")[0]) for l in installed) if n not in image
                   and n not in ALWAYS_THERE)
  if foreign:  # The rehearsal would then pass on something the device does not have.
    sys.exit(f"the rehearsal venv holds what the device image lacks: {', '.join(foreign)} "
             "(.ci/rehearsal.txt pulls it in)")
  with open(stamp, "w") as f:
    f.write(spec)


def rehearse(venv, peer_python, out):
  venv = os.path.abspath(venv)
  build_venv(venv)
  wheels = sorted(os.path.join(WHEEL_DIR, f) for f in os.listdir(WHEEL_DIR)) if os.path.isdir(WHEEL_DIR) else []
  if not wheels:
    sys.exit("no wheels in .whl/: run make gpu-wheels first")
  site = os.path.join(venv, "site")
  shutil.rmtree(site, ignore_errors=True)
  env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}  # No find-links, no index.
  py = os.path.join(venv, "bin", "python")
  # The device command's install step, word for word.
  subprocess.run([py, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
                  "--upgrade", "--target", site, *wheels], check=True, env=env)
  env.update(PYTHONPATH=site, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
  env.pop("XLA_FLAGS", None)
  cmd = [py, "-m", "fakejax.gpu_check", "--quick", "--strict", "--out", out, "--deadline_s", "900"]
  if peer_python:
    cmd += ["--peer_python", os.path.abspath(peer_python)]
  subprocess.run(cmd, check=True, env=env, cwd=ROOT)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("command", choices=("download", "rehearse"))
  p.add_argument("--venv", default=".venv-rehearsal", help="rehearse: the image-like venv (made once).")
  p.add_argument("--peer_python", default="", help="rehearse: the PyTorch peer's interpreter ('' : none).")
  p.add_argument("--out", default="runs/gpu_rehearsal", help="rehearse: the check's output folder.")
  args = p.parse_args(argv)
  if args.command == "download":
    download()
  else:
    try:
      rehearse(args.venv, args.peer_python, args.out)
    except subprocess.CalledProcessError as e:
      sys.exit(f"gpu rehearsal failed: {' '.join(map(str, e.cmd[:4]))} ... exited {e.returncode}")


if __name__ == "__main__":
  main()
