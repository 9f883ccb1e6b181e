#!/usr/bin/env bash
# Spark 4 needs Java 17 or newer; it is the only thing the project cannot install itself.
set -euo pipefail
java_bin="${JAVA_HOME:+$JAVA_HOME/bin/}java"
if ! command -v "$java_bin" >/dev/null 2>&1; then
  echo "error: Java 17+ is required (Spark runs on the JVM) and no 'java' was found on PATH or in JAVA_HOME." >&2
  echo "       Install a JDK, e.g. 'apt-get install openjdk-17-jdk-headless', then run make again." >&2
  exit 1
fi
version_line=$("$java_bin" -version 2>&1 | head -n 1)
major=$(echo "$version_line" | sed -E 's/.*version "([0-9]+)(\.[0-9]+)*.*/\1/')
if ! [[ "$major" =~ ^[0-9]+$ ]] || [ "$major" -lt 17 ]; then
  echo "error: Java 17+ is required by Spark 4; found: $version_line" >&2
  exit 1
fi
if ! { [ -n "${JAVA_HOME:-}" ] && [ -x "$JAVA_HOME/bin/javac" ]; } && ! command -v javac >/dev/null 2>&1; then
  echo "note: no javac (a JRE without the JDK): local jobs write through Hadoop's own local file system," >&2
  echo "      which starts a process per file it creates (lakehouse/local_fs.py). A JDK's javac avoids that." >&2
fi
