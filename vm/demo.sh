#!/bin/sh
# The demo job inside the bench: what upci sees, one device driven through the
# raw API, then the main job: the driver host running three devices from a config.
set -e
node dist/bin/upci.js list
for address in 0000:00:04.0 0000:00:06.0 0000:00:08.0; do
  node dist/bin/upci.js info "$address"
done
node dist/vm/demo-edu.js
# 60 s: each driver starts in a thread of its own, which takes 10-20 s in this TCG
# guest to load its modules (over 9p), before its interrupts begin.
node dist/bin/upci.js run drivers/examples/bench.json --duration 60
