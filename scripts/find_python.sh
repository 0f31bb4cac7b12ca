#!/bin/sh
# Prints the newest Python that runs on this machine among the versions given (default: 3.13,
# 3.12, 3.11, in that order), looking on PATH and in pyenv's versions (pyenv's shim for a version
# that is not selected exists but fails, so each candidate is run once); else python3.
#   scripts/find_python.sh            # what make train / make test use
#   scripts/find_python.sh 3.11       # the torch venv's: its wheels lie on disk for 3.11 only
versions=${*:-3.13 3.12 3.11}
for v in $versions; do
  for p in "python$v" $(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$v".*/bin/python"$v" 2>/dev/null | sort -rV); do
    if "$p" -c 'import sys' >/dev/null 2>&1; then
      command -v "$p"
      exit 0
    fi
  done
done
command -v python3
