#!/usr/bin/env bash
# Debian's chromium and chromedriver, for the test that opens the MLflow UI in a real browser
# (tests/ml/test_training.py, the MLflow UI test). Run by `make test`; does nothing when both are present.
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "error: chromium and chromedriver are missing; install them as root: apt-get install chromium chromium-driver" >&2; exit 1; }
  sudo="sudo"
fi
echo "Installing Debian's chromium and chromium-driver (for the MLflow UI test)"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver >/dev/null
command -v chromedriver >/dev/null || { echo "error: chromium-driver did not install chromedriver" >&2; exit 1; }
