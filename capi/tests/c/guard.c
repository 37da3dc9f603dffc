/* A malloc interposer preloaded in front of libshardalloc.so
 * (LD_PRELOAD=guard.so:libshardalloc.so): every allocation function counts
 * calls made while the same thread is already inside one of them, then
 * forwards to the next definition (shardalloc's). If the allocator ever
 * called malloc/free/... itself, that call would land here nested. At exit
 * it prints "reentrant calls: N of M". */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <unistd.h>

static __thread int depth;
static atomic_long calls, nested;

typedef void *(*malloc_fn)(size_t);
typedef void (*free_fn)(void *);
typedef void *(*realloc_fn)(void *, size_t);
typedef int (*posix_memalign_fn)(void **, size_t, size_t);
typedef void *(*memalign_fn)(size_t, size_t);
typedef void *(*aligned_alloc_fn)(size_t, size_t);
static malloc_fn next_malloc;
static free_fn next_free;
static realloc_fn next_realloc;
static posix_memalign_fn next_posix_memalign;
static memalign_fn next_memalign;
static aligned_alloc_fn next_aligned_alloc;
/* Resolved once, before main and before any thread exists (dlsym may call
 * calloc, served from the bootstrap buffer meanwhile). */
__attribute__((constructor(101))) static void resolve(void) {
    next_malloc = (malloc_fn)dlsym(RTLD_NEXT, "malloc");
    next_free = (free_fn)dlsym(RTLD_NEXT, "free");
    next_realloc = (realloc_fn)dlsym(RTLD_NEXT, "realloc");
    next_posix_memalign = (posix_memalign_fn)dlsym(RTLD_NEXT, "posix_memalign");
    next_memalign = (memalign_fn)dlsym(RTLD_NEXT, "memalign");
    next_aligned_alloc = (aligned_alloc_fn)dlsym(RTLD_NEXT, "aligned_alloc");
}
#define NEXT(name)                                                           \
    if (!next_##name) resolve();

#define ENTER()                                                              \
    atomic_fetch_add_explicit(&calls, 1, memory_order_relaxed);              \
    if (depth++ > 0) atomic_fetch_add_explicit(&nested, 1, memory_order_relaxed)
#define LEAVE() depth--

/* dlsym may call calloc before next_calloc is known: serve it from here. */
static char bootstrap[4096];
static size_t bootstrap_used;

void *malloc(size_t n) {
    NEXT(malloc)
    ENTER();
    void *p = next_malloc(n);
    LEAVE();
    return p;
}
void *calloc(size_t c, size_t n) {
    static void *(*next_calloc)(size_t, size_t);
    static int resolving;
    if (!next_calloc) {
        if (resolving) {
            void *p = bootstrap + bootstrap_used;
            bootstrap_used += (c * n + 15) & ~(size_t)15;
            return p;
        }
        resolving = 1;
        next_calloc = (void *(*)(size_t, size_t))dlsym(RTLD_NEXT, "calloc");
        resolving = 0;
    }
    ENTER();
    void *p = next_calloc(c, n);
    LEAVE();
    return p;
}
void free(void *p) {
    if ((char *)p >= bootstrap && (char *)p < bootstrap + sizeof bootstrap) return;
    NEXT(free)
    ENTER();
    next_free(p);
    LEAVE();
}
void *realloc(void *p, size_t n) {
    NEXT(realloc)
    ENTER();
    void *q = next_realloc(p, n);
    LEAVE();
    return q;
}
int posix_memalign(void **out, size_t a, size_t n) {
    NEXT(posix_memalign)
    ENTER();
    int r = next_posix_memalign(out, a, n);
    LEAVE();
    return r;
}
void *memalign(size_t a, size_t n) {
    NEXT(memalign)
    ENTER();
    void *p = next_memalign(a, n);
    LEAVE();
    return p;
}
void *aligned_alloc(size_t a, size_t n) {
    NEXT(aligned_alloc)
    ENTER();
    void *p = next_aligned_alloc(a, n);
    LEAVE();
    return p;
}

__attribute__((destructor)) static void report(void) {
    char line[128];
    int len = snprintf(line, sizeof line, "reentrant calls: %ld of %ld\n",
                       atomic_load(&nested), atomic_load(&calls));
    if (write(2, line, (size_t)len) < 0) return;
}
