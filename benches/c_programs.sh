#!/usr/bin/env bash
# Times real programs under LD_PRELOAD: glibc's malloc, shardalloc
# (target/release/libshardalloc.so), mimalloc and jemalloc. Wall time, peak
# RSS and CPU time (benches/c/run.c: /usr/bin/time's %e %M %U %S from
# wait4, to the millisecond rather than 10 ms), medians of interleaved
# rounds; prints Markdown tables.
#
# mimalloc and jemalloc are built here, once, from the C sources that the
# benches' Rust dependencies vendor (the versions in Cargo.lock: crate
# libmimalloc-sys -> mimalloc v3, crate tikv-jemalloc-sys -> jemalloc 5.3),
# as LD_PRELOAD-able shared libraries cached in target/c-peers/ (mimalloc:
# one cc call, seconds; jemalloc: its shipped configure + make, about two
# minutes on two cores). A peer whose sources or tools are missing is
# skipped with a message; C_PEERS=none skips both, C_PEERS=mimalloc one.
# Usage: bash benches/c_programs.sh [rounds]   (default 5; about 4 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
peers=${C_PEERS:-mimalloc jemalloc}

cargo build --release -p shardalloc-capi >&2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cache=$PWD/target/c-peers
mkdir -p "$cache"

# The unpacked source of crate $1 at the version Cargo.lock pins, fetched
# with `cargo fetch` if it is not in the registry yet; empty if unavailable.
crate_source() {
    local version dir
    version=$(grep -A1 "^name = \"$1\"$" Cargo.lock | sed -n 's/^version = "\(.*\)"$/\1/p')
    [[ -n "$version" ]] || return 0
    dir=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"$1-$version" 2>/dev/null | head -1 || true)
    if [[ -z "$dir" ]]; then
        cargo fetch >&2 || true
        dir=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"$1-$version" 2>/dev/null | head -1 || true)
    fi
    echo "$dir"
}

# mimalloc v3 as a preloadable library: its single-file build (src/static.c)
# with the definitions and flags of its CMake release build of the shared,
# overriding library.
build_mimalloc() {
    local src so
    src=$(crate_source libmimalloc-sys)
    [[ -n "$src" && -f "$src/c_src/mimalloc/v3/src/static.c" ]] || return 0
    so=$cache/mimalloc-$(basename "$src")/libmimalloc.so
    if [[ ! -f "$so" ]]; then
        mkdir -p "$(dirname "$so")"
        echo "building mimalloc from $src/c_src/mimalloc/v3 ..." >&2
        cc -O3 -DNDEBUG -shared -fPIC -fvisibility=hidden -ftls-model=initial-exec \
            -fno-builtin-malloc -Wno-unknown-pragmas \
            -DMI_SHARED_LIB -DMI_SHARED_LIB_EXPORT -DMI_MALLOC_OVERRIDE \
            -I"$src/c_src/mimalloc/v3/include" -o "$so.tmp" \
            "$src/c_src/mimalloc/v3/src/static.c" -lpthread >&2 && mv "$so.tmp" "$so" || return 0
    fi
    echo "$so"
}

# jemalloc 5.3 as a preloadable library: the crate's pre-generated
# configure (no autoconf needed) and make, unprefixed (it exports malloc).
build_jemalloc() {
    local src so build version
    src=$(crate_source tikv-jemalloc-sys)
    [[ -n "$src" && -f "$src/configure/configure" ]] || return 0
    command -v make >/dev/null || { echo "(jemalloc: no make)" >&2; return 0; }
    build=$cache/jemalloc-$(basename "$src" | cut -d+ -f1)
    so=$build/lib/libjemalloc.so.2
    if [[ ! -f "$so" ]]; then
        echo "building jemalloc from $src/jemalloc (about 2 minutes) ..." >&2
        rm -rf "$build"
        cp -r "$src/jemalloc" "$build"
        cp "$src/configure/configure" "$build/configure"
        version=${src##*+}
        (cd "$build" &&
            sh configure --with-version="$version" --disable-cxx --enable-doc=no \
                --disable-static >configure.log 2>&1 &&
            make -j"$(nproc)" build_lib_shared >make.log 2>&1) ||
            { echo "(jemalloc: build failed, see $build/*.log)" >&2; return 0; }
    fi
    echo "$so"
}

declare -A libs=([glibc]="" [shardalloc]="$PWD/target/release/libshardalloc.so")
order=(glibc shardalloc)
for name in mimalloc jemalloc; do
    so=""
    if [[ " $peers " == *" $name "* ]]; then so=$(build_$name); fi
    if [[ -n "$so" ]]; then libs[$name]=$so; order+=("$name"); else
        echo "($name: skipped: not requested in C_PEERS, or its vendored sources are missing)" >&2; fi
done
echo "peers: ${order[*]}; $(date -u '+%F %H:%M UTC'); load before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

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
cc -O2 -o "$work/run" benches/c/run.c
cc -O2 -pthread -o "$work/cases" capi/tests/c/cases.c capi/tests/c/ctor_lib.c -ldl 2>/dev/null || \
    { cc -O2 -shared -fPIC -o "$work/libctor_lib.so" capi/tests/c/ctor_lib.c;
      cc -O2 -pthread -o "$work/cases" capi/tests/c/cases.c -L"$work" -lctor_lib -Wl,-rpath,"$work" -ldl; }

# The interpreter itself, not a wrapper script in front of it (pyenv's
# shim is a bash script that would run, preloaded, in every measurement).
python=$(python3 -c 'import sys; print(sys.executable)')
programs=(
    "python3 (PYTHONMALLOC=malloc)|env PYTHONMALLOC=malloc $python $work/work.py"
    "git log -p (300 commits)|git -C $work/repo log -p"
    "sort -k2n (1M lines)|sort -k2,2n -k1,1 $work/lines.txt"
    "gzip -6 (1M lines)|gzip -6 -c $work/lines.txt"
    "C: cross-thread frees (2 threads)|$work/cases crossfree"
    "C: 6000 short-lived threads|$work/cases churn"
)

# Each round runs every program under every allocator, the allocators in
# a rotated order (so none always runs first or right after another).
declare -A times rss cpu
n=${#order[@]}
for ((r = 0; r < rounds; r++)); do
    for p in "${programs[@]}"; do
        label=${p%%|*}; cmd=${p#*|}
        for ((k = 0; k < n; k++)); do
            a=${order[$(((k + r) % n))]}
            out=$(LD_PRELOAD=${libs[$a]} "$work/run" $cmd 2>&1 >/dev/null | tail -1)
            read -r e m u s <<<"$out"
            times[$label|$a]+="$e "
            rss[$label|$a]+="$m "
            cpu[$label|$a]+="$(echo "$u + $s" | bc -l) "
        done
    done
    echo "round $((r + 1))/$rounds done (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
# Wall time and peak RSS, then CPU time (user + system, all threads): on a
# shared machine a program that waits on the scheduler (thread creation)
# has a noisy wall time and a steadier CPU time.
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
echo
printf "| program (CPU s, user + sys) |"; for a in "${order[@]}"; do printf " %s |" "$a"; done; echo
printf "|---|"; for a in "${order[@]}"; do printf -- "---:|"; done; echo
for p in "${programs[@]}"; do
    label=${p%%|*}
    printf "| %s |" "$label"
    for a in "${order[@]}"; do
        printf " %.3f |" "$(echo "${cpu[$label|$a]}" | median)"
    done
    echo
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
