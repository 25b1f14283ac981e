#!/usr/bin/env bash
# The two commands of the README: `bash run.sh demo` and `bash run.sh test`.
# Each first installs whatever is missing into ./.venv (Python 3.10+ and pip are all it needs).
set -euo pipefail
cd "$(dirname "$0")"
venv=${MIMKIT_VENV:-.venv}
if [[ ! -x $venv/bin/python || pyproject.toml -nt $venv/.installed ]]; then
  echo "run.sh: installing mimkit and its dependencies into $venv (first run only)" >&2
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[test]'
  # MTCNN's face-detector weights (MIT) ship inside facenet-pytorch, which pins an old torch: take the files only
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps facenet-pytorch==2.6.0
  touch "$venv/.installed"
fi
command=${1:-}
shift || true
case $command in
  demo) exec "$venv/bin/mimkit" demo "$@" ;;
  test) exec "$venv/bin/python" -m pytest -q -n 2 "$@" ;;
  *) echo "usage: bash run.sh demo [--out DIR] | bash run.sh test [pytest args]" >&2; exit 2 ;;
esac
