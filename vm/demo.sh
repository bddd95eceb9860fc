#!/bin/sh
# The demo job inside the bench: what upci sees, then one device driven from userland.
set -e
node dist/bin/upci.js list
for address in 0000:00:04.0 0000:00:06.0 0000:00:08.0; do
  node dist/bin/upci.js info "$address"
done
node dist/vm/demo-edu.js
