#!/bin/sh
# A GPU co-tenant stand-in: runs until stopped, and stops at once on SIGTERM.
trap 'exit 0' TERM INT
while :; do sleep 1 & wait $!; done
