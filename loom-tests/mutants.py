#!/usr/bin/env python3
"""Shows that each loom model has teeth: applies one deliberate bug (a
weakened ordering or a skipped step) to a scratch copy of the crate, runs
the model that specifies the protocol, and expects loom to fail it.

Usage: python3 loom-tests/mutants.py [name ...]   (default: all; ~30 s each)
Prints one line per mutant: KILLED (the model caught it) or SURVIVED, with
the first line loom or the model reported. Exits non-zero if any survived.
"""

import os
import shutil
import subprocess
import sys
import tempfile

# name: (file, exact text to replace, replacement, test file, model)
MUTANTS = {
    # A reaper reads an idle owner's local_free without Acquire: the links
    # of the blocks it walks are not ordered after the owner's writes.
    "owner-list-acquire-relaxed": (
        "src/page/mod.rs",
        "        // Acquire pairs with the Release of `set`.\n        self.0.load(Ordering::Acquire)",
        "        // Acquire pairs with the Release of `set`.\n        self.0.load(Ordering::Relaxed)",
        "reaper", "reaper_leaves_a_full_page_with_live_blocks",
    ),
    # The owner collects a page of big blocks without the heap's lock: a
    # reaper may walk local_free while the owner moves it to `free`.
    "collect-big-page-unlocked": (
        "src/heap/alloc.rs",
        "let _guard = page.has_interiors().then(|| self.lock());",
        "let _guard = (false && page.has_interiors()).then(|| self.lock());",
        "reaper", "reaper_resets_local_free_interiors_while_owner_reuses_them",
    ),
    # The start-up work published without Release: a racing caller may
    # return before the work's effects are visible.
    "run-once-relaxed": (
        "src/once.rs",
        "                    self.state.store(DONE, Ordering::Release);",
        "                    self.state.store(DONE, Ordering::Relaxed);",
        "once", "run_once_races",
    ),
    # Remote push onto the page's thread-free list without Release.
    "push-relaxed": (
        "src/page/thread_free.rs",
        "                desired,\n                Ordering::Release,\n                Ordering::Relaxed,\n"
        "            ) {\n                Ok(_) => break delayed,",
        "                desired,\n                Ordering::Relaxed,\n                Ordering::Relaxed,\n"
        "            ) {\n                Ok(_) => break delayed,",
        "thread_free", "thread_free_push_races_collect",
    ),
    # Remote push onto the heap's delayed list without Release.
    "delayed-push-relaxed": (
        "src/heap/delayed.rs",
        "match list.compare_exchange_weak(current, head, Ordering::Release, Ordering::Relaxed) {",
        "match list.compare_exchange_weak(current, head, Ordering::Relaxed, Ordering::Relaxed) {",
        "thread_free", "delayed_free_of_full_page_races_owner",
    ),
    # The owner stops waiting out a remote thread in `Freeing`.
    "owner-ignores-freeing": (
        "src/page/thread_free.rs",
        "            if current == DelayedMode::Freeing {",
        "            if false && current == DelayedMode::Freeing {",
        "teardown", "heap_teardown_races_remote_free",
    ),
    # Orphaning a huge page with a blind store instead of a CAS.
    "orphan-blind-store": (
        "src/page/thread_free.rs",
        "        self.thread_free\n            .compare_exchange(\n                idle,",
        "        self.thread_free.store(empty_list(DelayedMode::Never), Ordering::Release);\n"
        "        self.thread_free\n            .compare_exchange(\n                empty_list(DelayedMode::Never),",
        "teardown", "huge_orphan_handoff",
    ),
    # Publishing an abandoned segment without Release.
    "abandon-push-relaxed": (
        "src/process.rs",
        "                first,\n                Ordering::Release,\n                Ordering::Relaxed,\n",
        "                first,\n                Ordering::Relaxed,\n                Ordering::Relaxed,\n",
        "abandon", "abandoned_list_push_races_pop",
    ),
    # Popping an abandoned segment without Acquire: its link is read
    # before the push that wrote it.
    "abandon-pop-relaxed": (
        "src/process.rs",
        "let mut top = queue.incoming.load(Ordering::Acquire);",
        "let mut top = queue.incoming.load(Ordering::Relaxed);",
        "abandon", "abandoned_list_push_races_pop",
    ),
    # The pop lock always "taken": pops and `visited` updates race.
    "abandon-pop-skips-lock": (
        "src/process.rs",
        "            if self\n                .popping\n                .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)\n                .is_ok()\n            {",
        "            if true {",
        "abandon", "abandoned_list_pops_race_pushes_and_keeps",
    ),
    # `collect(true)` takes a list whole without Acquire: its walk reads
    # links before the pushes that wrote them.
    "abandon-take-all-relaxed": (
        "src/process.rs",
        "let incoming = queue.incoming.swap(ptr::null_mut(), Ordering::Acquire);",
        "let incoming = queue.incoming.swap(ptr::null_mut(), Ordering::Relaxed);",
        "abandon", "abandoned_list_take_all_races_push_and_pop",
    ),
    # Reclaim without collecting the abandoned pages' remote frees first.
    "reclaim-skips-collect": (
        "src/heap/abandon.rs",
        "    unsafe { collect_abandoned(segment) };\n}",
        "}",
        "abandon", "abandon_and_reclaim_race_remote_frees",
    ),
    # Caching a segment with a blind store into the slot instead of a CAS.
    "cache-blind-store": (
        "src/segment_cache.rs",
        "            if slot\n                .compare_exchange(\n                    ptr::null_mut(),\n                    segment,\n                    Ordering::Release,\n                    Ordering::Relaxed,\n                )\n                .is_ok()",
        "            if { slot.store(segment, Ordering::Release); true }",
        "segment_cache", "segment_cache_put_races_take",
    ),
    # Publishing the exit key with a blind store instead of a CAS.
    "once-blind-store": (
        "src/once.rs",
        "match self\n            .cell\n            .compare_exchange(0, encoded, Ordering::Release, Ordering::Acquire)",
        "match { self.cell.store(encoded, Ordering::Release); Ok::<usize, usize>(0) }",
        "once", "publish_once_races",
    ),
    # The reaper frees a quiet owner's remotely freed huge block without
    # waiting out the freeing thread's `Freeing` step on the page (the
    # thread then ends that step on a released segment). Not the wait's
    # result ignored: its spins already let the freeing thread finish.
    "reaper-huge-ignores-freeing": (
        "src/heap/reap.rs",
        "            if !(*page).try_set_delayed_mode(DelayedMode::UseDelayed, false) {",
        "            if false {",
        "reaper", "reaper_races_the_remote_free_of_a_huge_block",
    ),
    # The reaper resets a heap's waiting slots without taking its lock.
    "reaper-skips-lock": (
        "src/heap/reap.rs",
        "            if !entry.try_lock() {\n                continue;\n            }\n            let heap = entry.heap();\n",
        "            let heap = entry.heap();\n",
        "reaper", "reaper_races_owner_reuse",
    ),
    # The registry's free stack without its tag: a stale pop (ABA) puts
    # an entry in use back on top.
    "registry-free-stack-untagged": (
        "src/registry.rs",
        "    ((top >> TAG_SHIFT).wrapping_add(1) << TAG_SHIFT) | index_plus_one",
        "    (top & !INDEX_MASK) | index_plus_one",
        "registry", "registry_claims_race_releases_and_growth",
    ),
    # Taking a heap's lock without Acquire.
    "heap-lock-relaxed": (
        "src/registry.rs",
        ".compare_exchange(OWNED, LOCKED, Ordering::Acquire, Ordering::Relaxed)",
        ".compare_exchange(OWNED, LOCKED, Ordering::Relaxed, Ordering::Relaxed)",
        "reaper", "reaper_races_owner_reuse",
    ),
    # A first-class heap takes an empty segment from the default heap
    # without the default heap's lock.
    "give-empty-skips-lock": (
        "src/heap/segments.rs",
        "        let _guard = self.lock();\n        let mut segment = list.first.get();\n",
        "        let mut segment = list.first.get();\n",
        "destroy", "reused_segment_of_destroyed_heap_races_reaper",
    ),
    # Destroy forgets the huge segment (leaks it) instead of unmapping it.
    "destroy-skips-segment": (
        "src/heap/mod.rs",
        "                if heir.is_null() || delay == 0 || (*segment).kind == PageKind::Huge {\n                    self.segment_free(segment);",
        "                if heir.is_null() || delay == 0 || (*segment).kind == PageKind::Huge {\n                    self.segments.remove(segment, segments::SegmentLinks::All);",
        "destroy", "destroy_races_remote_free_of_sibling_heap",
    ),
    # The reaper hands a page's remote-free chain back without Release.
    "remote-chain-relaxed": (
        "src/page/thread_free.rs",
        "                desired,\n                Ordering::Release,\n                Ordering::Relaxed,\n            ) {\n                Ok(_) => return,",
        "                desired,\n                Ordering::Relaxed,\n                Ordering::Relaxed,\n            ) {\n                Ok(_) => return,",
        "reaper", "reaper_hands_back_remote_frees_while_owner_collects",
    ),
    # The reaper hands the chain back with only its own length, dropping
    # the count of frees pushed meanwhile.
    "remote-chain-drops-count": (
        "src/page/thread_free.rs",
        "let desired = pack(head, count_of(word) + count, DelayedMode::of(word));",
        "let desired = pack(head, count, DelayedMode::of(word));",
        "reaper", "reaper_hands_back_remote_frees_while_owner_collects",
    ),
    # The owner moves an exhausted page to the full queue without the lock
    # (a reaper may be freeing another full page there).
    "full-queue-unlocked": (
        "src/heap/alloc.rs",
        "            let _guard = self.lock();\n            // SAFETY: ours, on queue `bin`, moved to the full queue.\n",
        "            // SAFETY: ours, on queue `bin`, moved to the full queue.\n",
        "reaper", "reaper_frees_a_wholly_freed_full_page_of_small_blocks",
    ),
    # The reaper frees a full page without checking that it holds every
    # block in use.
    "reaper-frees-busy-page": (
        "src/heap/reap.rs",
        "if page.is_in_full() && page.used.get_acquire() == held {",
        "if page.is_in_full() {",
        "reaper", "reaper_leaves_a_full_page_with_live_blocks",
    ),
    # The adopter takes a parked heap without Acquire: it touches the
    # heap's owner cells unordered with the parker's last writes.
    # A producer checks for a sleeper without the SeqCst fence after
    # publishing its work: both sides can miss each other's first step.
    "sleeper-wake-no-fence": (
        "src/sync.rs",
        "        // publication of work before the check of `asleep`.\n        fence(Ordering::SeqCst);\n",
        "        // publication of work before the check of `asleep`.\n",
        "sleeper", "sleeper_never_misses_work",
    ),
    # The sleeper checks for work before it announces itself: work
    # published in between wakes nobody.
    "sleeper-checks-before-announcing": (
        "src/sync.rs",
        "        self.asleep.store(1, Ordering::Relaxed);\n        // SeqCst: pairs with the fence in `wake` (see the type's documentation).\n        fence(Ordering::SeqCst);\n        while no_work() {",
        "        let idle = no_work();\n        self.asleep.store(1, Ordering::Relaxed);\n        // SeqCst: pairs with the fence in `wake` (see the type's documentation).\n        fence(Ordering::SeqCst);\n        while idle {",
        "sleeper", "sleeper_never_misses_work",
    ),
    "park-adopt-relaxed": (
        "src/heap/park.rs",
        "        slot.swap(ptr::null_mut(), Ordering::Acquire)",
        "        slot.swap(ptr::null_mut(), Ordering::Relaxed)",
        "park", "parked_heap_adopted_while_parker_frees",
    ),
    # Parking leaves the exiting thread's id on the segments: its later
    # frees take the local path into a heap another thread adopts.
    "park-keeps-thread-id": (
        "src/heap/park.rs",
        "            unsafe { self.stamp_segments(PARKED_ID) };\n",
        "",
        "park", "parked_heap_adopted_while_parker_frees",
    ),
}

PATTERNS = ("Causality", "assertion", "SIGSEGV", "signal", "panicked")


def first_reason(output):
    lines = output.splitlines()
    for pattern in PATTERNS:
        for i, line in enumerate(lines):
            if pattern in line:
                reason = line.strip()
                if pattern == "assertion" and i + 1 < len(lines):
                    reason += " " + lines[i + 1].strip()
                return reason
    return ""


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    names = sys.argv[1:] or list(MUTANTS)
    target = os.path.join(root, "target", "mutants")
    survivors = 0
    with tempfile.TemporaryDirectory() as scratch:
        copy = os.path.join(scratch, "shardalloc")
        shutil.copytree(root, copy, ignore=shutil.ignore_patterns("target", ".git"))
        for name in names:
            path, old, new, test, model = MUTANTS[name]
            original = open(os.path.join(root, path)).read()
            if original.count(old) != 1:
                print(f"{name:24} STALE: the text to mutate is not found exactly once in {path}")
                survivors += 1
                continue
            with open(os.path.join(copy, path), "w") as f:
                f.write(original.replace(old, new))
            env = dict(os.environ, RUSTFLAGS="--cfg loom", CARGO_TARGET_DIR=target,
                       LOOM_MAX_PREEMPTIONS=os.environ.get("LOOM_MAX_PREEMPTIONS", "2"))
            run = subprocess.run(
                ["cargo", "test", "--release", "-p", "shardalloc-loom-tests", "--test", test,
                 "--", "--exact", model],
                cwd=copy, env=env, capture_output=True, text=True)
            with open(os.path.join(copy, path), "w") as f:
                f.write(original)
            output = run.stdout + run.stderr
            if "error[" in output and "test result" not in output:
                print(f"{name:24} BUILD FAILED\n{output[-2000:]}")
                survivors += 1
                continue
            killed = run.returncode != 0
            verdict = "KILLED  " if killed else "SURVIVED"
            print(f"{name:24} {verdict} {model}: {first_reason(output)}", flush=True)
            survivors += 0 if killed else 1
    sys.exit(1 if survivors else 0)


if __name__ == "__main__":
    main()
