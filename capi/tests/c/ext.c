/* glibc's extension API under LD_PRELOAD=libshardalloc.so: mallinfo2,
 * mallinfo, mallopt, malloc_trim, malloc_info, malloc_stats. Prints "ok". */
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(cond)                                                          \
    do {                                                                     \
        if (!(cond)) {                                                       \
            fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);  \
            exit(1);                                                         \
        }                                                                    \
    } while (0)

int main(void) {
    enum { N = 20000 };
    static void *p[N];
    struct mallinfo2 before = mallinfo2();
    for (int i = 0; i < N; i++) p[i] = memset(malloc(1000), 1, 1000);
    struct mallinfo2 during = mallinfo2();
    CHECK(during.uordblks >= before.uordblks + (size_t)N * 1000);
    CHECK(during.arena >= during.uordblks);
    CHECK(during.fordblks == during.arena - during.uordblks);
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
    struct mallinfo old = mallinfo();
    CHECK(old.uordblks == (int)during.uordblks || old.uordblks > 0);

    /* mallopt: glibc's parameters, glibc's range checks. */
    CHECK(mallopt(M_TRIM_THRESHOLD, 0) == 1);
    CHECK(mallopt(M_TOP_PAD, 4096) == 1);
    CHECK(mallopt(M_MMAP_THRESHOLD, 1 << 20) == 1);
    CHECK(mallopt(M_MMAP_THRESHOLD, 64 << 20) == 1); /* as glibc 2.36 */
    CHECK(mallopt(M_MMAP_MAX, 100) == 1);
    CHECK(mallopt(M_CHECK_ACTION, 3) == 1);
    CHECK(mallopt(M_PERTURB, 0) == 1);
    CHECK(mallopt(M_ARENA_TEST, 8) == 1);
    CHECK(mallopt(M_ARENA_MAX, 2) == 1);
    CHECK(mallopt(M_MXFAST, 64) == 1);
    CHECK(mallopt(M_MXFAST, 1000) == 0);
    CHECK(mallopt(12345, 1) == 1); /* unknown: 1, as glibc 2.36 */

    for (int i = 0; i < N; i++) free(p[i]);
    struct mallinfo2 after = mallinfo2();
    CHECK(after.uordblks < during.uordblks);
    /* M_TRIM_THRESHOLD 0 gave the pages back at once; trim finds less. */
    int trimmed = malloc_trim(0);
    CHECK(trimmed == 0 || trimmed == 1);
    CHECK(mallopt(M_TRIM_THRESHOLD, 128 * 1024 * 1024) == 1);
    for (int i = 0; i < N; i++) p[i] = memset(malloc(1000), 1, 1000);
    for (int i = 0; i < N; i++) free(p[i]);
    CHECK(malloc_trim(0) == 1); /* 20 MB waited for the delay: trim sends it back */

    /* malloc_info: XML in glibc's shape; options must be 0. */
    char *xml = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&xml, &len);
    CHECK(malloc_info(0, f) == 0);
    fclose(f);
    CHECK(strncmp(xml, "<malloc version=\"1\">\n", 21) == 0);
    CHECK(strstr(xml, "<system type=\"current\" size=\"") != NULL);
    CHECK(strstr(xml, "</malloc>\n") != NULL);
    free(xml);
    errno = 0;
    CHECK(malloc_info(1, stdout) == -1 && errno == EINVAL);

    malloc_stats(); /* checked by the test on stderr */
    printf("ok\n");
    return 0;
}
