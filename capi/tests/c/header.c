/* A program linked with -lshardalloc through include/shardalloc.h: the
 * prefixed functions, options, stats, and first-class heaps. Prints "ok". */
#include "shardalloc.h"
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
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

static void *free_elsewhere(void *block) {
    shardalloc_free(block); /* a heap's block, freed by another thread */
    return NULL;
}

int main(void) {
    char *p = shardalloc_malloc(100);
    CHECK(p && shardalloc_usable_size(p) >= 100);
    p = shardalloc_realloc(p, 10000);
    CHECK(p);
    void *z = shardalloc_calloc(10, 10);
    CHECK(z && ((char *)z)[99] == 0);
    void *a = shardalloc_aligned_alloc(1 << 16, 100);
    CHECK(a && ((uintptr_t)a & 0xFFFF) == 0);
    errno = 0;
    CHECK(shardalloc_aligned_alloc(48, 100) == NULL && errno == EINVAL);
    free(a); /* the same allocator as malloc */
    shardalloc_free(z);
    shardalloc_free(p);

    CHECK(shardalloc_set_reset_delay_ms(60001) == EINVAL);
    CHECK(shardalloc_set_reset_delay_ms(20) == 0 && shardalloc_reset_delay_ms() == 20);
    CHECK(shardalloc_set_reset_mode(2) == EINVAL);
    CHECK(shardalloc_set_reset_mode(0) == 0 && shardalloc_reset_mode() == 0);
    shardalloc_set_pending_reset_limit(1 << 20);
    CHECK(shardalloc_pending_reset_limit() == 1 << 20);
    CHECK(shardalloc_set_segment_cache(17) == EINVAL);
    CHECK(shardalloc_set_segment_cache(2) == 0 && shardalloc_segment_cache() == 2);
    CHECK(shardalloc_set_dense_segments(65) == EINVAL);
    CHECK(shardalloc_set_dense_segments(0) == 0 && shardalloc_dense_segments() == 0);
    CHECK(shardalloc_set_dense_segments(4) == 0 && shardalloc_dense_segments() == 4);
    shardalloc_set_huge_os_pages(0);
    CHECK(shardalloc_huge_os_pages() == 0);

    shardalloc_heap_t *heap = shardalloc_heap_new();
    CHECK(heap);
    void *blocks[1000];
    for (int i = 0; i < 1000; i++) {
        blocks[i] = shardalloc_heap_malloc(heap, 16 + i);
        CHECK(blocks[i] && shardalloc_heap_contains(heap, blocks[i]));
        memset(blocks[i], 1, 16 + i);
    }
    CHECK(!shardalloc_heap_contains(heap, &heap));
    char *grown = shardalloc_heap_realloc(heap, blocks[0], 100000);
    CHECK(grown && grown[15] == 1 && shardalloc_heap_contains(heap, grown));
    blocks[0] = grown;
    char *zeroed = shardalloc_heap_calloc(heap, 100, 100);
    CHECK(zeroed && zeroed[9999] == 0);
    void *al = shardalloc_heap_malloc_aligned(heap, 10, 4096);
    CHECK(al && ((uintptr_t)al & 4095) == 0);
    shardalloc_heap_free(heap, blocks[1]);
    pthread_t t;
    pthread_create(&t, NULL, free_elsewhere, blocks[2]);
    pthread_join(t, NULL);
    struct shardalloc_stats s;
    shardalloc_get_stats(&s);
    CHECK(s.live >= 1000 * 16 && s.heaps >= 2 && s.committed >= s.live);
    shardalloc_heap_destroy(heap); /* the rest goes at once */

    shardalloc_heap_t *kept = shardalloc_heap_new();
    char *survivor = shardalloc_heap_malloc(kept, 64);
    strcpy(survivor, "still valid");
    shardalloc_heap_delete(kept);
    CHECK(strcmp(survivor, "still valid") == 0);
    free(survivor);

    shardalloc_collect(1);
    printf("ok\n");
    return 0;
}
