#!/usr/bin/env bash
# Autobahn|Testsuite (wstest), the WebSocket conformance suite, for
# tests/test_autobahn.py. It runs only on Python 2.7, which pyenv provides.
# Idempotent: does nothing when wstest already runs.
set -euo pipefail

py27=${NETCONN_PY27:-$HOME/.pyenv/versions/2.7.18/bin/python}
wstest=${NETCONN_WSTEST:-$HOME/.local/bin/wstest}

if [ -x "$wstest" ] && "$wstest" --help >/dev/null 2>&1; then
  exit 0
fi
if [ ! -x "$py27" ]; then
  if command -v pyenv >/dev/null; then
    pyenv install -s 2.7.18
  else
    echo "autobahn.sh: Python 2.7 not found at $py27 (set NETCONN_PY27)" >&2
    exit 1
  fi
fi
# Pinned so the install is reproducible; it pins its own Python 2.7 dependencies.
"$py27" -m pip install -q --user --disable-pip-version-check 'autobahntestsuite==25.10.1'
"$wstest" --help >/dev/null
echo "autobahn.sh: $("$wstest" --autobahnversion 2>/dev/null || echo wstest) installed at $wstest"
