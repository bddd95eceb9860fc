#!/bin/sh
# The demo job inside the bench: what upci sees, one device driven through the
# raw API, then the main job: the driver host running three devices from a config.
set -e
node dist/bin/upci.js list
for address in 0000:00:04.0 0000:00:06.0 0000:00:08.0; do
  node dist/bin/upci.js info "$address"
done
node dist/vm/demo-edu.js
node dist/bin/upci.js run drivers/examples/bench.json --duration 8
