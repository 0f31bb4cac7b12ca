r"""How far `config` travels: the functions a training run hands its config to, in order.

  python scripts/config_path.py                 # three recipes' runs, 2 steps each
  python scripts/config_path.py --list          # ... and every stop, in order

Runs `python -m fakejax.train` on three configs that take different branches (configs/quick.py,
configs/deepfd.py's two stages, configs/univfd.py:tiny's cached-feature probe), 2 steps each in a
temporary folder, under a profile hook, and follows the config from the training entry point on
(building the config itself is not counted): every call of a fakejax function that receives a
ConfigDict (the config or one of its blocks: model, data, aug, optim) as an argument, or an
object holding one as an attribute (a context, a train state, `self`), is a stop.
Reported:
  stops     distinct functions that receive it (module.function), over the three runs;
  modules   distinct modules among them;
  returns   in the order of the first call of each stop (run after run), the times the path
            enters a module it had already left in that run (A -> B -> A counts one);
  climbs    the times the path goes from a lower layer to a higher one: commands (fakejax's
            CLI modules; '__main__' is fakejax.train) > training, scoring, runs > the rest (data,
            models, checkpoint, ...);
  up_calls  distinct calls (caller function -> stop) whose caller sits in a lower layer than the
            stop: a module below calling back up (the caller is the actual frame, not the order).
The issue of the redesign (33) counted the same things by reading; this measures them, so two
commits can be compared with one tool (run it from each checkout).
"""

import argparse
import json
import os
import runpy
import subprocess
import sys
import tempfile

import ml_collections

COMMANDS = {"train", "evaluate", "predict", "explain", "serve", "convert", "prepare", "benchmark", "cli"}
MIDDLE = {"training", "scoring", "runs", "trainer", "loop", "probe", "evaluator"}


CONFIGS = ("configs/quick.py", "configs/deepfd.py", "configs/univfd.py:tiny")
SKIP = ("fakejax.defaults", "fakejax.cli")  # Building and parsing the config.


def layer(module):
  """2 for a command, 1 for training/scoring/runs, 0 for everything below them."""
  parts = ["train"] if module == "__main__" else module.split(".")[1:]
  if parts and parts[0] in COMMANDS:
    return 2
  return 1 if parts and (parts[0] in MIDDLE) else 0


def carries_config(value):
  """A ConfigDict, or an object with one among its attributes."""
  if isinstance(value, ml_collections.ConfigDict):
    return True
  attrs = getattr(value, "__dict__", None)
  return isinstance(attrs, dict) and any(isinstance(v, ml_collections.ConfigDict) for v in list(attrs.values()))


def trace(argv):
  """[(module, qualname)] of the first call of each fakejax function given a ConfigDict."""
  root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fakejax")
  seen, order, up = set(), [], set()

  def hook(frame, event, arg):
    del arg
    if event != "call" or not frame.f_code.co_filename.startswith(root):
      return
    code = frame.f_code
    names = code.co_varnames[:code.co_argcount + code.co_kwonlyargcount]
    if not any(carries_config(frame.f_locals.get(n)) for n in names):
      return
    key = (frame.f_globals.get("__name__", "?"), code.co_qualname)
    if key[0] in SKIP:
      return
    if key not in seen:
      seen.add(key)
      order.append(key)
    back = frame.f_back
    caller = back.f_globals.get("__name__", "?") if back else "?"
    if caller.split(".")[0] in ("fakejax", "__main__") and layer(caller) < layer(key[0]):
      up.add(((caller, back.f_code.co_qualname), key))

  sys.argv = ["fakejax.train"] + argv
  sys.setprofile(hook)
  try:
    runpy.run_module("fakejax.train", run_name="__main__")
  except SystemExit:
    pass
  finally:
    sys.setprofile(None)
  return order, sorted(up)


def measure(orders, ups=()):
  """{'stops', 'modules', 'returns', 'climbs', 'up_calls'} of the runs' paths and up-calls (see
  the module docstring)."""
  stops, returns, climbs = set(), 0, 0
  for order in orders:
    stops.update(order)
    modules = [m for m, _ in order]
    path = [m for i, m in enumerate(modules) if i == 0 or m != modules[i - 1]]
    returns += sum(1 for i, m in enumerate(path) if m in path[:i])
    climbs += sum(1 for a, b in zip(path, path[1:]) if layer(b) > layer(a))
  return {"stops": len(stops), "modules": len({m for m, _ in stops}), "returns": returns, "climbs": climbs,
          "up_calls": len({tuple(map(tuple, u)) for run in ups for u in run})}


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--list", action="store_true", help="Print every stop, in order.")
  p.add_argument("--data_cache", default="data", help="Where the synthetic benchmark is cached.")
  p.add_argument("--trace", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)  # One run, in a child.
  args = p.parse_args()
  if args.trace is not None:  # absl defines the train flags once per process: one run per child.
    print(json.dumps(trace(args.trace)))
    return
  orders, ups = [], []
  with tempfile.TemporaryDirectory() as tmp:
    for i, config in enumerate(CONFIGS):
      steps = (["--config.deepfd.stage1_steps=1", "--config.deepfd.stage2_steps=1"] if "deepfd" in config
               else ["--config.num_epochs=2"] if "univfd" in config else ["--config.total_steps=2"])
      argv = ["--config", config, "--workdir", os.path.join(tmp, str(i)), *steps, "--config.eval_every_steps=2",
              "--config.log_every_steps=1", f"--config.data.cache_dir={args.data_cache}"]
      out = subprocess.run([sys.executable, os.path.abspath(__file__), "--trace", *argv], check=True,
                           stdout=subprocess.PIPE, text=True).stdout
      order, up = json.loads(out.strip().splitlines()[-1])
      orders.append([tuple(stop) for stop in order])
      ups.append(up)
      if args.list:
        print(config)
        for module, name in orders[-1]:
          print(f"  [{layer(module)}] {module}.{name}")
        for (cm, cf), (m, f) in up:
          print(f"  up: {cm}.{cf} -> {m}.{f}")
  print(" ".join(f"{k}={v}" for k, v in measure(orders, ups).items()))


if __name__ == "__main__":
  main()
