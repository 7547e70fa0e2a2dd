#!/usr/bin/env bash
# Make sure Debian's Fashion-MNIST package is installed (/usr/share/datasets/fashion-mnist).
# Installs it when missing and this runs as root with apt-get; otherwise says how to get it.
# Never fails: `aaer demo` itself explains the alternatives (--download, --data-dir).
set -uo pipefail
DIR=/usr/share/datasets/fashion-mnist
if [ -f "$DIR/train-images-idx3-ubyte.gz" ]; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian's dataset-fashion-mnist (into $DIR) ..." >&2
  if apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null; then
    exit 0
  fi
  echo "apt-get could not install dataset-fashion-mnist" >&2
else
  echo "Fashion-MNIST is not in $DIR; to install it: sudo apt-get install -y dataset-fashion-mnist" >&2
fi
exit 0
