#!/bin/sh
# coffer-admin: run a coffer admin command the way it must run on the server: as the
# `coffer` user (the admin socket talks only to the uid running `coffer serve`, and files
# made by an offline command must belong to coffer) and with the production configuration.
#
# Install:  install -m 0755 coffer-admin.sh /usr/local/sbin/coffer-admin
# Use:      sudo coffer-admin device list
#           sudo coffer-admin device enroll --user anna
#
# With coffer.service running, commands go through its admin socket (no passphrase).
# With it stopped, they open the database and ask for the passphrase on the terminal.
set -eu
cd /var/lib/coffer
if [ "$(id -un)" = coffer ]; then
  exec /usr/local/bin/coffer --config /etc/coffer/coffer.toml "$@"
fi
exec sudo -u coffer -- /usr/local/bin/coffer --config /etc/coffer/coffer.toml "$@"
