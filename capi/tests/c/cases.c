/* The hard parts of being preloaded, one mode per argv[1]; each mode
 * prints "ok" on success (and exits 0), or a reason and exits 1.
 * Built with -pthread -ldl, linked against ctor_lib.so. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <malloc.h>
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define FAIL(...)                                                            \
    do {                                                                     \
        fprintf(stderr, __VA_ARGS__);                                        \
        fprintf(stderr, " (line %d)\n", __LINE__);                           \
        exit(1);                                                             \
    } while (0)

const char *ctor_lib_message(void);

/* malloc then free, through a volatile pointer so the compiler cannot
 * elide the pair (GCC removes an unused malloc/free pair). */
static void alloc_free(size_t n) {
    void *volatile p = malloc(n);
    free(p);
}

/* ---- ctor: our own constructor (runs before main, after ctor_lib's). */
static char *early;
__attribute__((constructor(101))) static void early_init(void) {
    early = strdup("early constructor");
    for (int i = 0; i < 1000; i++) {
        void *volatile sink = malloc(i); /* volatile: not elided */
        free(sink);
    }
}

static size_t rss_bytes(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long size = 0, resident = 0;
    if (!f || fscanf(f, "%lu %lu", &size, &resident) != 2) FAIL("statm");
    fclose(f);
    return resident * (size_t)sysconf(_SC_PAGESIZE);
}

static int mode_ctor(void) {
    if (!early || strcmp(early, "early constructor") != 0) FAIL("early ctor");
    if (strcmp(ctor_lib_message(), "constructed") != 0) FAIL("lib ctor");
    free(early);
    return 0;
}

/* ---- tsd: pthread key destructors and atexit handlers allocating and
 * freeing after the thread's heap is torn down. */
static pthread_key_t key_a, key_b;
static void destructor_a(void *value) {
    /* Frees a block of this thread, allocates and frees fresh ones, and
     * sets the key again twice (glibc runs destructors again for keys set
     * during a round, up to 4 rounds, so nothing is left behind). */
    int round = *(int *)value;
    free(value);
    char *p = malloc(300);
    memset(p, 1, 300);
    void *q = calloc(10, 1000);
    p = realloc(p, 70000);
    free(q);
    if (round < 2) {
        *(int *)p = round + 1;
        pthread_setspecific(key_a, p);
    } else {
        free(p);
    }
}
static void destructor_b(void *value) {
    (void)value;
    void *volatile sink = malloc(1 << 20);
    free(sink);
}
static void *tsd_thread(void *arg) {
    (void)arg;
    void *blocks[100];
    for (int i = 0; i < 100; i++) blocks[i] = malloc(16 * i + 1);
    for (int i = 0; i < 100; i++) free(blocks[i]);
    int *first = calloc(1, 1000);
    pthread_setspecific(key_a, first);
    pthread_setspecific(key_b, (void *)1);
    return malloc(5000); /* freed by the joiner */
}
static void *atexit_block;
static void atexit_handler(void) {
    free(atexit_block);
    char *p = malloc(12345);
    memset(p, 2, 12345);
    free(p);
    printf("atexit done\n");
}
static int mode_tsd(void) {
    pthread_key_create(&key_a, destructor_a);
    pthread_key_create(&key_b, destructor_b);
    atexit_block = malloc(777);
    atexit(atexit_handler);
    size_t rss_early = 0;
    for (int round = 0; round < 100; round++) {
        if (round == 10) rss_early = rss_bytes();
        pthread_t t[8];
        for (int i = 0; i < 8; i++)
            if (pthread_create(&t[i], NULL, tsd_thread, NULL)) FAIL("create");
        for (int i = 0; i < 8; i++) {
            void *r;
            pthread_join(t[i], &r);
            free(r);
        }
    }
    size_t rss_end = rss_bytes();
    if (rss_end > rss_early + (16u << 20)) FAIL("RSS grew %zu -> %zu", rss_early, rss_end);
    return 0;
}

/* ---- dlopen: dlopen/dlsym/dlerror (which call calloc and malloc) in
 * several threads. */
static void *dl_thread(void *arg) {
    (void)arg;
    for (int i = 0; i < 200; i++) {
        void *h = dlopen("libm.so.6", RTLD_NOW);
        if (!h) FAIL("dlopen: %s", dlerror());
        double (*cos_fn)(double) = (double (*)(double))dlsym(h, "cos");
        if (!cos_fn || cos_fn(0.0) != 1.0) FAIL("dlsym cos");
        if (dlsym(h, "no_such_symbol_here") != NULL) FAIL("dlsym missing");
        if (dlerror() == NULL) FAIL("dlerror");
        void *missing = dlopen("libno-such-library.so.42", RTLD_NOW);
        if (missing || !dlerror()) FAIL("dlopen missing");
        dlclose(h);
    }
    return NULL;
}
static int mode_dlopen(void) {
    pthread_t t[4];
    for (int i = 0; i < 4; i++) pthread_create(&t[i], NULL, dl_thread, NULL);
    for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
    return 0;
}

/* ---- fork while other threads allocate; malloc and pthread_create in
 * the child. */
static volatile int stop_workers;
static void *busy_thread(void *arg) {
    (void)arg;
    void *ring[64] = {0};
    unsigned i = 0;
    while (!stop_workers) {
        free(ring[i % 64]);
        ring[i % 64] = malloc(8 + (i * 131) % 20000);
        i++;
    }
    for (i = 0; i < 64; i++) free(ring[i]);
    return NULL;
}
static void *child_thread(void *arg) {
    char *p = malloc(1000);
    memset(p, 3, 1000);
    free(arg); /* a block of the child's main thread */
    return p;
}
static int mode_fork(void) {
    pthread_t workers[3];
    for (int i = 0; i < 3; i++) pthread_create(&workers[i], NULL, busy_thread, NULL);
    for (int round = 0; round < 40; round++) {
        void *before = malloc(100 + round);
        pid_t pid = fork();
        if (pid < 0) FAIL("fork");
        if (pid == 0) {
            free(before); /* a parent block, in the child */
            for (int i = 0; i < 1000; i++) alloc_free((size_t)i * 7);
            pthread_t t[4];
            for (int i = 0; i < 4; i++)
                if (pthread_create(&t[i], NULL, child_thread, malloc(50))) _exit(2);
            for (int i = 0; i < 4; i++) {
                void *r;
                pthread_join(t[i], &r);
                free(r);
            }
            _exit(0);
        }
        int status;
        if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
            FAIL("child %d failed (status %d)", round, status);
        free(before);
    }
    stop_workers = 1;
    for (int i = 0; i < 3; i++) pthread_join(workers[i], NULL);
    return 0;
}

/* ---- churn: thousands of short-lived threads, each allocating, freeing
 * and handing a block to the next; resident memory stays bounded. */
static void *churn_thread(void *arg) {
    free(arg); /* the previous thread's block */
    void *blocks[32];
    for (int i = 0; i < 32; i++) blocks[i] = malloc(24 + i * 97);
    for (int i = 0; i < 32; i++) free(blocks[i]);
    char *next = malloc(200);
    memset(next, 4, 200);
    return next;
}
static int mode_churn(void) {
    void *carry = malloc(200);
    size_t rss_mid = 0;
    for (int i = 0; i < 6000; i++) {
        pthread_t t;
        if (pthread_create(&t, NULL, churn_thread, carry)) FAIL("create %d", i);
        pthread_join(t, &carry);
        if (i == 1000) rss_mid = rss_bytes();
    }
    free(carry);
    size_t rss_end = rss_bytes();
    if (rss_end > rss_mid + (32u << 20)) FAIL("RSS grew %zu -> %zu", rss_mid, rss_end);
    return 0;
}

/* ---- crossfree: blocks freed by threads other than their allocator's. */
#define QUEUE 1024
static void *queue[QUEUE];
static unsigned head, tail;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static void *producer(void *arg) {
    (void)arg;
    for (unsigned i = 0; i < 200000; i++) {
        size_t n = 8 + (i * 2654435761u) % 3000;
        unsigned char *p = malloc(n);
        memset(p, (unsigned char)n, n);
        memcpy(p, &n, sizeof n);
        pthread_mutex_lock(&lock);
        while (head - tail == QUEUE) pthread_cond_wait(&cond, &lock);
        queue[head++ % QUEUE] = p;
        pthread_cond_broadcast(&cond);
        pthread_mutex_unlock(&lock);
    }
    return NULL;
}
static void *consumer(void *arg) {
    (void)arg;
    for (unsigned i = 0; i < 200000; i++) {
        pthread_mutex_lock(&lock);
        while (head == tail) pthread_cond_wait(&cond, &lock);
        unsigned char *p = queue[tail++ % QUEUE];
        pthread_cond_broadcast(&cond);
        pthread_mutex_unlock(&lock);
        size_t n;
        memcpy(&n, p, sizeof n);
        if (malloc_usable_size(p) < n) FAIL("usable size");
        for (size_t j = sizeof n; j < n; j++)
            if (p[j] != (unsigned char)n) FAIL("block changed in flight");
        free(p);
    }
    return NULL;
}
static int mode_crossfree(void) {
    pthread_t p, c;
    pthread_create(&p, NULL, producer, NULL);
    pthread_create(&c, NULL, consumer, NULL);
    pthread_join(p, NULL);
    pthread_join(c, NULL);
    return 0;
}

/* ---- The founding notes' two glibc cases: memory freed comes back
 * without malloc_trim. Prints "rss_kib baseline peak after" and the
 * milliseconds waited. */
static size_t now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (size_t)t.tv_sec * 1000 + (size_t)t.tv_nsec / 1000000;
}
static void report_rss(size_t base, size_t peak) {
    /* The program goes on running, allocating a little as programs do
     * (small blocks only: a free of 64 KiB or more would make glibc
     * consolidate and trim, which is not the case), for up to 3 s or until
     * fifteen sixteenths of what was freed is back: shardalloc gives empty
     * pages back along its reset delay (SHARDALLOC_RESET_DELAY_MS), glibc
     * never does here, so under glibc this waits the whole 3 s. */
    static void *keep[4000];
    size_t start = now_ms(), after;
    do {
        usleep(50000);
        for (int i = 0; i < 4000; i++) keep[i] = malloc(16 + (size_t)(i % 50) * 8);
        for (int i = 0; i < 4000; i++) free(keep[i]);
        after = rss_bytes();
    } while (after > base + (peak - base) / 16 && now_ms() - start < 3000);
    printf("rss_kib %zu %zu %zu waited_ms %zu\n", base / 1024, peak / 1024, after / 1024,
           now_ms() - start);
}
/* (a) everything below one live block at the top of the heap is freed. */
static int mode_rss_top(void) {
    enum { N = 200000 };
    static void *p[N];
    size_t base = rss_bytes();
    for (int i = 0; i < N; i++) {
        p[i] = malloc(1000);
        memset(p[i], 1, 1000);
    }
    /* Stays live, above everything else. volatile and written: GCC removes
     * a malloc whose result only reaches free, which at -O1 and up made
     * this block vanish, and glibc's heap then shrank with brk. */
    char *volatile top = malloc(1000);
    memset(top, 2, 1000);
    size_t peak = rss_bytes();
    for (int i = 0; i < N; i++) free(p[i]);
    report_rss(base, peak);
    free(top);
    return 0;
}
/* (b) many small freed blocks (glibc's fastbins and tcache). */
static int mode_rss_fastbins(void) {
    enum { N = 3000000 };
    void **p = malloc(N * sizeof *p);
    memset(p, 0, N * sizeof *p);
    size_t base = rss_bytes();
    for (int i = 0; i < N; i++) {
        p[i] = malloc(16 + (i % 4) * 8);
        memset(p[i], 1, 16);
    }
    size_t peak = rss_bytes();
    for (int i = 0; i < N; i++) free(p[i]);
    report_rss(base, peak);
    free(p);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) FAIL("usage: cases MODE");
    const char *m = argv[1];
    int r = !strcmp(m, "ctor")       ? mode_ctor()
            : !strcmp(m, "tsd")      ? mode_tsd()
            : !strcmp(m, "dlopen")   ? mode_dlopen()
            : !strcmp(m, "fork")     ? mode_fork()
            : !strcmp(m, "churn")    ? mode_churn()
            : !strcmp(m, "crossfree") ? mode_crossfree()
            : !strcmp(m, "rss_top")  ? mode_rss_top()
            : !strcmp(m, "rss_fastbins") ? mode_rss_fastbins()
                                     : -1;
    if (r < 0) FAIL("unknown mode %s", m);
    if (r == 0) printf("ok\n");
    return r;
}
