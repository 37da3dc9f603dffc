#!/usr/bin/env bash
# Times real programs under LD_PRELOAD: glibc's malloc, shardalloc
# (target/release/libshardalloc.so), and mimalloc / jemalloc when their
# shared libraries are installed (/usr/lib/x86_64-linux-gnu/libmimalloc.so*,
# libjemalloc.so*). Wall time and peak RSS (/usr/bin/time's %e and %M),
# medians of interleaved rounds; prints a Markdown table.
# Usage: bash benches/c_programs.sh [rounds]   (default 5; about 3 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}

cargo build --release -p shardalloc-capi >&2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

declare -A libs=([glibc]="" [shardalloc]="$PWD/target/release/libshardalloc.so")
order=(glibc shardalloc)
for name in mimalloc jemalloc; do
    so=$(ls /usr/lib/x86_64-linux-gnu/lib$name.so* 2>/dev/null | head -1 || true)
    if [[ -n "$so" ]]; then libs[$name]=$so; order+=("$name"); else
        echo "($name: no shared library installed, skipped)" >&2; fi
done

# Inputs.
python3 - "$work/lines.txt" <<'PY'
import random, sys
random.seed(1)
with open(sys.argv[1], "w") as f:
    for i in range(1_000_000):
        f.write("%x %d %s\n" % (random.getrandbits(48), random.randrange(1000), "w" * random.randrange(20)))
PY
cat > "$work/work.py" <<'PY'
import json, threading
rows = [{"id": i, "name": "n%d" % (i * 7919 % 10007), "tags": [str(j) for j in range(i % 13)]}
        for i in range(100000)]
rows.sort(key=lambda r: (r["name"], -r["id"]))
back = json.loads(json.dumps(rows))
def work(k):
    d = {}
    for x in range(100000):
        d[str(x * k)] = [x] * (x % 7)
threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
[t.start() for t in threads]; [t.join() for t in threads]
print(len(back))
PY
git init -q -b main "$work/repo"
(
    cd "$work/repo"
    export GIT_AUTHOR_NAME=b GIT_AUTHOR_EMAIL=b@x GIT_COMMITTER_NAME=b GIT_COMMITTER_EMAIL=b@x
    for i in $(seq 1 300); do
        seq "$i" $((i * 40)) > "f$((i % 17)).txt"
        git add -A && git commit -qm "c$i"
    done
)
cc -O2 -pthread -o "$work/cases" capi/tests/c/cases.c capi/tests/c/ctor_lib.c -ldl 2>/dev/null || \
    { cc -O2 -shared -fPIC -o "$work/libctor_lib.so" capi/tests/c/ctor_lib.c;
      cc -O2 -pthread -o "$work/cases" capi/tests/c/cases.c -L"$work" -lctor_lib -Wl,-rpath,"$work" -ldl; }

programs=(
    "python3 (PYTHONMALLOC=malloc)|env PYTHONMALLOC=malloc python3 $work/work.py"
    "git log -p (300 commits)|git -C $work/repo log -p"
    "sort -k2n (1M lines)|sort -k2,2n -k1,1 $work/lines.txt"
    "gzip -6 (1M lines)|gzip -6 -c $work/lines.txt"
    "C: cross-thread frees (2 threads)|$work/cases crossfree"
    "C: 6000 short-lived threads|$work/cases churn"
)

declare -A times rss
for ((r = 0; r < rounds; r++)); do
    for p in "${programs[@]}"; do
        label=${p%%|*}; cmd=${p#*|}
        for a in "${order[@]}"; do
            out=$(LD_PRELOAD=${libs[$a]} /usr/bin/time -f "%e %M" $cmd 2>&1 >/dev/null | tail -1)
            times[$label|$a]+="${out% *} "
            rss[$label|$a]+="${out#* } "
        done
    done
    echo "round $((r + 1))/$rounds done" >&2
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
printf "| program |"; for a in "${order[@]}"; do printf " %s s | %s MiB |" "$a" "$a"; done; echo
printf "|---|"; for a in "${order[@]}"; do printf -- "---:|---:|"; done; echo
for p in "${programs[@]}"; do
    label=${p%%|*}
    printf "| %s |" "$label"
    for a in "${order[@]}"; do
        t=$(echo "${times[$label|$a]}" | median)
        m=$(echo "${rss[$label|$a]}" | median)
        printf " %s | %.1f |" "$t" "$(echo "$m / 1024" | bc -l)"
    done
    echo
done
