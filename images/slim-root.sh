#!/bin/sh
# slim-root.sh ROOT: remove from the root filesystem at ROOT (a copy of the base image, made in a build stage)
# what no kubellm container runs: Debian's package tools and their databases, every shell, and pip (the base's
# own, and the wheels `python -m ensurepip` or `python -m venv` would install it from). Both final stages are
# this tree plus a virtualenv: the server and the operator are exec'd as /opt/*/bin/kubellm (a Python script the
# kernel starts through its #! line), and so is the `inference` liveness probe (`kubellm probe live`).
# Works on Debian's python3 (/usr/bin, CI's base) and on the official python image (/usr/local).
set -eu
root=${1:?usage: slim-root.sh ROOT}
cd "$root"
for dir in bin sbin usr/bin usr/sbin usr/local/bin; do
  [ -d "$dir" ] || continue
  # Package management: apt, dpkg and debconf (perl-base is there only for them).
  rm -f "$dir"/apt "$dir"/apt-* "$dir"/dpkg "$dir"/dpkg-* "$dir"/debconf "$dir"/debconf-* \
    "$dir"/update-alternatives "$dir"/perl "$dir"/perl5* "$dir"/add-shell "$dir"/remove-shell
  # Shells: sh, dash, bash, rbash.
  rm -f "$dir"/sh "$dir"/dash "$dir"/bash "$dir"/rbash
  # pip, for any Python.
  rm -f "$dir"/pip "$dir"/pip3 "$dir"/pip3.*
done
rm -rf etc/apt etc/dpkg var/lib/apt var/lib/dpkg var/cache/apt var/cache/debconf var/lib/debconf var/log/apt \
  usr/lib/apt usr/lib/dpkg usr/share/dpkg usr/share/debconf usr/share/perl5/Debian \
  usr/lib/*/perl-base usr/lib/*/perl usr/share/perl usr/share/perl5 \
  usr/share/python-wheels \
  usr/lib/python3*/ensurepip usr/local/lib/python3*/ensurepip \
  usr/lib/python3/dist-packages/pip usr/lib/python3/dist-packages/pip-* \
  usr/local/lib/python3*/site-packages/pip usr/local/lib/python3*/site-packages/pip-*
rm -f etc/shells var/log/dpkg.log var/log/alternatives.log
