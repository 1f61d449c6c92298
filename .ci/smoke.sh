#!/usr/bin/env bash
# Packaging smoke test: build the sdist and the wheel, install only the wheel (with pytest,
# pytest-asyncio and the clients) into a fresh venv, and run a user's test file there from
# outside the checkout, so nothing comes from the source tree.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m pip install --quiet --disable-pip-version-check build
python3 -m build --outdir "$work/dist" . >"$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }
ls "$work"/dist/amqpd-*.tar.gz >/dev/null
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet --disable-pip-version-check "$work"/dist/amqpd-*.whl \
    pytest pytest-asyncio pika aio-pika kombu
cp .ci/smoke/test_user_suite.py .ci/smoke/pytest.ini "$work/"
cd "$work"
timeout 120 "$work/venv/bin/python" -m pytest -q -p no:cacheprovider test_user_suite.py
timeout 30 "$work/venv/bin/amqpd" --print-default-config >/dev/null
timeout 30 "$work/venv/bin/amqpctl" --help >/dev/null
echo "packaging smoke test passed"
