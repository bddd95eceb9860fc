#!/bin/sh
#
# campaign.sh [runs] [libFuzzer flags...]: a long fuzzing campaign of
# pci_user.c (fuzz.c).  Builds the fuzzer (build.sh fuzz) and its
# coverage twin (build.sh cov) into obj/, fuzzes `runs' inputs (default
# 10000000) from corpus/ and regressions/ into work/corpus/ (gitignored:
# the committed corpus is never written), then prints the executions,
# exec/s and the line coverage of pci_user.c reached by replaying
# work/corpus/.  A crash stops the run: its reproducer is in work/, and
# the script exits non-zero.
#
# ASan keeps 64 MiB of freed memory in quarantine (the default 256 MiB
# took a third of the CPU in page faults and cache misses, measured) and
# 5 frames of allocation stacks; ASAN_OPTIONS overrides both.  64 MiB
# still holds everything freed within an input: the fuzzer's machine has
# 8 MiB of DMA memory (fuzz.c).
#
# Environment: CAMPAIGN_WORK, the work directory (default work/; a
# directory outside the repository keeps a big corpus out of the
# worktree); CAMPAIGN_LOG, libFuzzer's log (default $work/fuzz.log).
#
# To stop it early, send SIGINT to the fuzz process (not to this
# script): the executions so far and the coverage are still printed.
#
# To keep new seeds (optional), merge a minimized set into corpus/:
#	obj/fuzz -merge=1 corpus work/corpus
#
set -eu

here=$(cd "$(dirname "$0")" && pwd)
runs=${1:-10000000}
[ $# -gt 0 ] && shift
fuzz=$(sh "$here/build.sh" fuzz "$here/obj")
cov=$(sh "$here/build.sh" cov "$here/obj")
work=${CAMPAIGN_WORK:-$here/work}
log=${CAMPAIGN_LOG:-$work/fuzz.log}
mkdir -p "$work/corpus"
cd "$work"

export ASAN_OPTIONS="${ASAN_OPTIONS-quarantine_size_mb=64:malloc_context_size=5}"
echo "campaign: $runs runs of $fuzz, corpus $work/corpus" >&2
start=$(date +%s)
status=0
"$fuzz" -runs="$runs" -timeout=30 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$work/" "$@" \
    "$work/corpus" "$here/corpus" "$here/regressions" 2>"$log" ||
    status=$?
end=$(date +%s)
grep '^stat::' "$log" || true
execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
# libFuzzer's exit on SIGINT (-interrupt_exitcode): stopped, not a crash.
if [ "$status" -eq 72 ] && grep -q 'run interrupted' "$log"; then
	echo "campaign: stopped by SIGINT after $execs executions in" \
	    "$((end - start)) s, no crash"
elif [ "$status" -ne 0 ]; then
	tail -60 "$log"
	echo "campaign: FAILED (exit $status) after $((end - start)) s;" \
	    "reproducer(s):" $(ls -t "$work"/crash-* "$work"/leak-* \
	    "$work"/timeout-* "$work"/oom-* 2>/dev/null)
	exit "$status"
else
	echo "campaign: $execs executions in $((end - start)) s, no crash"
fi

# Line coverage of pci_user.c: replay the corpus on the coverage build.
if command -v llvm-profdata-14 >/dev/null && command -v llvm-cov-14 >/dev/null
then
	rm -f "$work/cov.profraw"
	LLVM_PROFILE_FILE="$work/cov.profraw" "$cov" -runs=0 \
	    "$work/corpus" "$here/corpus" "$here/regressions" \
	    >/dev/null 2>&1 || true
	llvm-profdata-14 merge -o "$work/cov.profdata" "$work/cov.profraw"
	llvm-cov-14 report "$cov" -instr-profile="$work/cov.profdata" \
	    "$here/../sys/dev/pci/pci_user.c" | tail -1 |
	    awk '{ print "campaign: pci_user.c lines " $10 " (" $8 - $9 \
	    " of " $8 "), regions " $4 ", branches " $13 }'
else
	echo "campaign: no llvm-profdata-14/llvm-cov-14: coverage not measured"
fi
