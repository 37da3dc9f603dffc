/* Conformance of the malloc family with glibc 2.36's documented rules
 * (malloc(3), posix_memalign(3), malloc_usable_size(3), mallopt(3)). One check per
 * rule, each in a forked child so that a crash fails only its check.
 * Prints one line per check and "N passed, M failed" last; exits 1 if any
 * check failed. Run it plain (glibc) and under LD_PRELOAD=libshardalloc.so. */
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

extern void *__libc_malloc(size_t);
extern void __libc_free(void *);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);

#define HUGE_REQUEST ((size_t)1 << 50) /* more than any machine maps */
#define CHECK(cond)                                                          \
    do {                                                                     \
        if (!(cond)) {                                                       \
            fprintf(stderr, "    %s:%d: %s\n", __FILE__, __LINE__, #cond);   \
            return 1;                                                        \
        }                                                                    \
    } while (0)

static int aligned(void *p, size_t a) { return ((uintptr_t)p & (a - 1)) == 0; }
static int filled(const unsigned char *p, size_t n, unsigned char v) {
    for (size_t i = 0; i < n; i++)
        if (p[i] != v) return 0;
    return 1;
}
/* volatile so the compiler cannot fold the calls away (it knows malloc). */
static volatile size_t v_size_max = SIZE_MAX;
static volatile size_t v_huge = HUGE_REQUEST;

/* malloc(3): returns a pointer to usable memory of the size asked for. */
static int malloc_returns_usable_memory(void) {
    for (size_t n = 1; n <= (1u << 24); n *= 3) {
        unsigned char *p = malloc(n);
        CHECK(p != NULL);
        memset(p, 0xA5, n);
        CHECK(filled(p, n, 0xA5));
        free(p);
    }
    return 0;
}

/* malloc(3): "If size is 0, then malloc() returns a unique pointer value
 * that can later be successfully passed to free()". */
static int malloc_zero_is_unique(void) {
    void *a = malloc(0), *b = malloc(0);
    CHECK(a != NULL && b != NULL && a != b);
    free(a);
    free(b);
    return 0;
}

/* malloc(3): memory "suitably aligned for any built-in type": 16 B on x86-64
 * for blocks of 16 B and more. */
static int malloc_aligns_to_16(void) {
    for (size_t n = 16; n <= (1u << 22); n += n / 3 + 1) {
        void *p[8];
        for (int i = 0; i < 8; i++) {
            p[i] = malloc(n);
            CHECK(p[i] != NULL && aligned(p[i], 16));
        }
        for (int i = 0; i < 8; i++) free(p[i]);
    }
    return 0;
}

/* malloc(3): "On error, these functions return NULL and set errno" (ENOMEM). */
static int malloc_failure_sets_enomem(void) {
    errno = 0;
    CHECK(malloc(v_size_max) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(malloc(v_huge) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(malloc((size_t)PTRDIFF_MAX + 1) == NULL && errno == ENOMEM);
    return 0;
}

/* malloc(3): "If ptr is NULL, no operation is performed." */
static int free_null_is_noop(void) {
    errno = 77;
    free(NULL);
    CHECK(errno == 77);
    return 0;
}

/* malloc(3) (glibc 2.33+): free() preserves errno. */
static int free_preserves_errno(void) {
    size_t sizes[] = {8, 100, 5000, 70000, 300000, 3u << 20, 40u << 20};
    for (unsigned i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        void *p = malloc(sizes[i]);
        CHECK(p != NULL);
        memset(p, 1, sizes[i]);
        errno = 12345;
        free(p);
        CHECK(errno == 12345);
    }
    return 0;
}

/* malloc(3): calloc "The memory is set to zero" (also when reused). */
static int calloc_zeroes(void) {
    for (int round = 0; round < 3; round++) {
        void *dirty[64];
        for (int i = 0; i < 64; i++) {
            dirty[i] = malloc(1000);
            memset(dirty[i], 0xFF, 1000);
        }
        for (int i = 0; i < 64; i++) free(dirty[i]);
        for (int i = 0; i < 64; i++) {
            unsigned char *p = calloc(125, 8);
            CHECK(p != NULL && filled(p, 1000, 0));
            dirty[i] = p;
        }
        for (int i = 0; i < 64; i++) free(dirty[i]);
    }
    unsigned char *big = calloc(1, 9u << 20);
    CHECK(big != NULL && filled(big, 9u << 20, 0));
    free(big);
    return 0;
}

/* malloc(3): calloc with nmemb or size 0 returns a unique pointer. */
static int calloc_zero_is_unique(void) {
    void *a = calloc(0, 8), *b = calloc(8, 0);
    CHECK(a != NULL && b != NULL && a != b);
    free(a);
    free(b);
    return 0;
}

/* malloc(3): "If the multiplication of nmemb and size would result in
 * integer overflow, then calloc() returns an error" (NULL, ENOMEM). */
static int calloc_overflow_fails(void) {
    errno = 0;
    CHECK(calloc(v_size_max / 2, 3) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(calloc((size_t)1 << 33, (size_t)1 << 33) == NULL && errno == ENOMEM);
    return 0;
}

/* malloc(3): "If ptr is NULL, then the call is equivalent to malloc(size)". */
static int realloc_null_is_malloc(void) {
    unsigned char *p = realloc(NULL, 100);
    CHECK(p != NULL);
    memset(p, 3, 100);
    free(p);
    void *z = realloc(NULL, 0);
    CHECK(z != NULL);
    free(z);
    return 0;
}

/* malloc(3): "if size is equal to zero, and ptr is not NULL, then the call
 * is equivalent to free(ptr)" (glibc returns NULL). */
static int realloc_zero_frees(void) {
    for (int i = 0; i < 1000; i++) {
        void *p = malloc(64 + i);
        CHECK(p != NULL);
        CHECK(realloc(p, 0) == NULL);
    }
    return 0;
}

/* malloc(3): "The contents of the memory will be unchanged in the range
 * from the start of the region up to the minimum of the old and new sizes." */
static int realloc_keeps_contents(void) {
    unsigned char *p = malloc(10);
    CHECK(p != NULL);
    memset(p, 7, 10);
    size_t old = 10;
    size_t sizes[] = {24, 200, 5000, 100000, 5u << 20, 12u << 20, 3000, 40, 5};
    for (unsigned i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        p = realloc(p, sizes[i]);
        CHECK(p != NULL);
        CHECK(filled(p, old < sizes[i] ? old : sizes[i], 7));
        memset(p, 7, sizes[i]);
        old = sizes[i];
    }
    free(p);
    return 0;
}

/* malloc(3): "If realloc() fails, the original block is left untouched; it
 * is not freed or moved" (NULL, errno ENOMEM). */
static int realloc_failure_keeps_block(void) {
    size_t sizes[] = {100, 70000, 3u << 20};
    for (unsigned i = 0; i < 3; i++) {
        unsigned char *p = malloc(sizes[i]);
        CHECK(p != NULL);
        memset(p, 9, sizes[i]);
        errno = 0;
        CHECK(realloc(p, v_size_max) == NULL && errno == ENOMEM);
        errno = 0;
        CHECK(realloc(p, v_huge) == NULL && errno == ENOMEM);
        CHECK(filled(p, sizes[i], 9));
        free(p);
    }
    return 0;
}

/* malloc(3): realloc results are aligned as malloc's. */
static int realloc_aligns_to_16(void) {
    void *p = malloc(1);
    for (size_t n = 16; n < (1u << 21); n = n * 2 + 16) {
        p = realloc(p, n);
        CHECK(p != NULL && aligned(p, 16));
    }
    free(p);
    return 0;
}

/* malloc(3): reallocarray "fails safely in the case where the
 * multiplication would overflow" (NULL, ENOMEM, block untouched). */
static int reallocarray_overflow_fails(void) {
    unsigned char *p = malloc(64);
    CHECK(p != NULL);
    memset(p, 5, 64);
    errno = 0;
    CHECK(reallocarray(p, v_size_max / 2, 3) == NULL && errno == ENOMEM);
    CHECK(filled(p, 64, 5));
    p = reallocarray(p, 100, 40);
    CHECK(p != NULL && filled(p, 64, 5));
    free(p);
    return 0;
}

/* posix_memalign(3): "The address of the allocated memory will be a
 * multiple of alignment", 0 returned on success (up to 2 MiB here). */
static int posix_memalign_aligns(void) {
    for (size_t a = sizeof(void *); a <= (4u << 20); a *= 2) {
        size_t sizes[] = {1, a / 2 + 1, a, 3 * a + 5};
        for (unsigned i = 0; i < 4; i++) {
            void *p = NULL;
            CHECK(posix_memalign(&p, a, sizes[i]) == 0);
            CHECK(p != NULL && aligned(p, a));
            memset(p, 1, sizes[i]);
            free(p);
        }
    }
    return 0;
}

/* posix_memalign(3): EINVAL when "The alignment argument was not a power
 * of two, or was not a multiple of sizeof(void *)"; errno is not set and
 * *memptr not written. */
static int posix_memalign_rejects_bad_alignment(void) {
    size_t bad[] = {0, 1, 2, 4, 12, 24, 48, 4097, (size_t)1 << 63 | 8};
    for (unsigned i = 0; i < sizeof bad / sizeof *bad; i++) {
        void *p = (void *)0x1234;
        errno = 99;
        CHECK(posix_memalign(&p, bad[i], 64) == EINVAL);
        CHECK(errno == 99 && p == (void *)0x1234);
    }
    return 0;
}

/* posix_memalign(3): ENOMEM returned when out of memory; *memptr not
 * written. */
static int posix_memalign_enomem(void) {
    void *p = (void *)0x1234;
    CHECK(posix_memalign(&p, 64, v_size_max) == ENOMEM && p == (void *)0x1234);
    CHECK(posix_memalign(&p, 4096, v_huge) == ENOMEM && p == (void *)0x1234);
    return 0;
}

/* posix_memalign(3): "The value of errno is not set" (also on ENOMEM).
 */
static int posix_memalign_keeps_errno(void) {
    void *p = NULL;
    errno = 99;
    CHECK(posix_memalign(&p, 64, v_size_max) == ENOMEM);
    CHECK(errno == 99);
    CHECK(posix_memalign(&p, 64, 100) == 0);
    CHECK(errno == 99);
    free(p);
    return 0;
}

/* posix_memalign(3): size 0 gives NULL or a unique pointer for free(). */
static int posix_memalign_zero_size(void) {
    void *a = NULL, *b = NULL;
    CHECK(posix_memalign(&a, 32, 0) == 0 && posix_memalign(&b, 32, 0) == 0);
    CHECK(a == NULL || a != b);
    free(a);
    free(b);
    return 0;
}

/* posix_memalign(3): aligned_alloc returns memory aligned to alignment. */
static int aligned_alloc_aligns(void) {
    for (size_t a = 1; a <= (4u << 20); a *= 2) {
        unsigned char *p = aligned_alloc(a, 3 * a);
        CHECK(p != NULL && aligned(p, a));
        size_t usable = malloc_usable_size(p);
        CHECK(usable >= 3 * a);
        memset(p, 2, usable); /* all of the usable size is the block's */
        unsigned char *q = aligned_alloc(a, a);
        CHECK(q != NULL && aligned(q, a));
        memset(q, 3, malloc_usable_size(q));
        CHECK(filled(p, usable, 2));
        free(q);
        free(p);
    }
    return 0;
}

/* posix_memalign(3): memalign returns memory aligned to alignment; glibc
 * 2.36 gives at least 16 and rounds other alignments up to a power of two. */
static int memalign_aligns(void) {
    for (size_t a = 1; a <= (4u << 20); a *= 2) {
        void *p = memalign(a, a + 1);
        CHECK(p != NULL && aligned(p, a) && aligned(p, 16));
        free(p);
    }
    void *p = memalign(48, 100);
    CHECK(p != NULL && aligned(p, 64));
    free(p);
    p = memalign(0, 10);
    CHECK(p != NULL && aligned(p, 16));
    free(p);
    return 0;
}

/* posix_memalign(3): "EINVAL The alignment argument was not a power of
 * two" where no power of two is left (glibc: above SIZE_MAX / 2 + 1). */
static int memalign_rejects_huge_alignment(void) {
    errno = 0;
    CHECK(memalign(((size_t)1 << 63) + 1, 8) == NULL && errno == EINVAL);
    errno = 0;
    CHECK(aligned_alloc(v_size_max, 8) == NULL && errno == EINVAL);
    return 0;
}

/* posix_memalign(3): memalign/aligned_alloc NULL with ENOMEM when out of
 * memory. */
static int memalign_failure_sets_enomem(void) {
    errno = 0;
    CHECK(memalign(64, v_size_max) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(aligned_alloc(1u << 21, v_huge) == NULL && errno == ENOMEM);
    return 0;
}

/* posix_memalign(3): valloc "The memory address will be a multiple of the
 * page size". */
static int valloc_page_aligned(void) {
    long page = sysconf(_SC_PAGESIZE);
    for (size_t n = 1; n < (1u << 22); n = n * 5 + 3) {
        void *p = valloc(n);
        CHECK(p != NULL && aligned(p, (size_t)page));
        memset(p, 4, n);
        free(p);
    }
    return 0;
}

/* posix_memalign(3): pvalloc "is similar to valloc(), but rounds the size
 * of the allocation up to the next multiple of the system page size". */
static int pvalloc_rounds_to_pages(void) {
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t sizes[] = {1, page - 1, page, page + 1, 5 * page + 7};
    for (unsigned i = 0; i < 5; i++) {
        unsigned char *p = pvalloc(sizes[i]);
        size_t rounded = (sizes[i] + page - 1) / page * page;
        CHECK(p != NULL && aligned(p, page));
        CHECK(malloc_usable_size(p) >= rounded);
        memset(p, 6, rounded);
        free(p);
    }
    errno = 0;
    CHECK(pvalloc(v_size_max - 10) == NULL && errno == ENOMEM);
    return 0;
}

/* malloc_usable_size(3): "returns the number of usable bytes in the block"
 * (at least the size requested, all of it writable); 0 for NULL. */
static int usable_size_is_usable(void) {
    CHECK(malloc_usable_size(NULL) == 0);
    for (size_t n = 1; n < (1u << 23); n = n * 3 + 1) {
        unsigned char *p = malloc(n);
        size_t u = malloc_usable_size(p);
        CHECK(u >= n);
        memset(p, 0x5A, u);
        unsigned char *q = malloc(n); /* a neighbour stays intact */
        memset(q, 0x33, malloc_usable_size(q));
        CHECK(filled(p, u, 0x5A));
        free(q);
        free(p);
    }
    return 0;
}

/* glibc: the __libc_* names are the same allocator as malloc/free. */
static int libc_aliases_are_the_allocator(void) {
    void *a = __libc_malloc(100);
    void *b = __libc_calloc(10, 10);
    CHECK(a != NULL && b != NULL && filled(b, 100, 0));
    a = __libc_realloc(a, 5000);
    CHECK(a != NULL);
    void *c = __libc_memalign(4096, 100);
    CHECK(c != NULL && aligned(c, 4096));
    free(a);         /* from __libc_realloc */
    __libc_free(b);  /* from __libc_calloc */
    free(c);
    void *d = malloc(10);
    __libc_free(d);  /* and back */
    return 0;
}

/* malloc(3): blocks are distinct and do not overlap. */
static int blocks_do_not_overlap(void) {
    enum { N = 4000 };
    static unsigned char *p[N];
    for (int i = 0; i < N; i++) {
        size_t n = 1 + (size_t)(i * 37) % 700;
        p[i] = malloc(n);
        CHECK(p[i] != NULL);
        memset(p[i], i & 0xFF, n);
    }
    for (int i = 0; i < N; i++) {
        size_t n = 1 + (size_t)(i * 37) % 700;
        CHECK(filled(p[i], n, i & 0xFF));
        free(p[i]);
    }
    return 0;
}

/* mallopt(3): "On success, mallopt() returns 1. On error, it returns 0."
 * What glibc 2.36 counts as an error: only M_MXFAST above
 * 80 * sizeof(size_t) / 4 (a negative value is a huge size_t). Every other
 * value of its parameters is accepted, and so is an unknown parameter:
 * __libc_mallopt starts from res = 1 and has no default case. */
static volatile int v_unknown_param = 12345;
static int mallopt_returns_as_glibc(void) {
    CHECK(mallopt(M_MXFAST, 0) == 1);
    CHECK(mallopt(M_MXFAST, 80 * sizeof(size_t) / 4) == 1);
    CHECK(mallopt(M_MXFAST, 80 * sizeof(size_t) / 4 + 1) == 0);
    CHECK(mallopt(M_MXFAST, -1) == 0);
    const int params[] = {M_TRIM_THRESHOLD, M_TOP_PAD,  M_MMAP_THRESHOLD,
                          M_MMAP_MAX,       M_PERTURB,  M_ARENA_TEST,
                          M_ARENA_MAX,      M_CHECK_ACTION};
    for (unsigned i = 0; i < sizeof params / sizeof *params; i++) {
        CHECK(mallopt(params[i], 0) == 1);
        CHECK(mallopt(params[i], -1) == 1);
        CHECK(mallopt(params[i], 1 << 30) == 1);
    }
    CHECK(mallopt(M_TRIM_THRESHOLD, 128 * 1024) == 1); /* glibc's default back */
    CHECK(mallopt(v_unknown_param, 1) == 1);
    CHECK(mallopt(0, 1) == 1);
    CHECK(mallopt(-100, 1) == 1);
    return 0;
}

struct check {
    const char *name;
    int (*run)(void);
};

#define C(f) {#f, f}
static const struct check checks[] = {
    C(malloc_returns_usable_memory), C(malloc_zero_is_unique),
    C(malloc_aligns_to_16), C(malloc_failure_sets_enomem),
    C(free_null_is_noop), C(free_preserves_errno), C(calloc_zeroes),
    C(calloc_zero_is_unique), C(calloc_overflow_fails),
    C(realloc_null_is_malloc), C(realloc_zero_frees),
    C(realloc_keeps_contents), C(realloc_failure_keeps_block),
    C(realloc_aligns_to_16), C(reallocarray_overflow_fails),
    C(posix_memalign_aligns), C(posix_memalign_rejects_bad_alignment),
    C(posix_memalign_enomem), C(posix_memalign_keeps_errno),
    C(posix_memalign_zero_size), C(aligned_alloc_aligns), C(memalign_aligns),
    C(memalign_rejects_huge_alignment), C(memalign_failure_sets_enomem),
    C(valloc_page_aligned), C(pvalloc_rounds_to_pages),
    C(usable_size_is_usable), C(libc_aliases_are_the_allocator),
    C(blocks_do_not_overlap), C(mallopt_returns_as_glibc),
};

int main(void) {
    int passed = 0, failed = 0;
    for (unsigned i = 0; i < sizeof checks / sizeof *checks; i++) {
        fflush(stdout);
        pid_t pid = fork();
        if (pid == 0) _exit(checks[i].run() == 0 ? 0 : 1);
        int status = 0;
        if (pid < 0 || waitpid(pid, &status, 0) != pid) status = -1;
        if (pid > 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0) {
            printf("ok   %s\n", checks[i].name);
            passed++;
        } else {
            if (pid > 0 && WIFSIGNALED(status))
                printf("FAIL %s (signal %d)\n", checks[i].name, WTERMSIG(status));
            else
                printf("FAIL %s\n", checks[i].name);
            failed++;
        }
    }
    printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}
