/* shardalloc.h: the C interface of libshardalloc (shardalloc-capi).
 *
 * Build: cargo build --release -p shardalloc-capi
 *   -> target/release/libshardalloc.so and target/release/libshardalloc.a
 * Link:  cc prog.c -I capi/include -L target/release -lshardalloc
 *   (the library also defines malloc, free, ... : linking it, or
 *   LD_PRELOAD=target/release/libshardalloc.so, replaces the C allocator.)
 *
 * Every allocation function returns NULL with errno = ENOMEM when memory
 * runs out; none of them aborts. Blocks of every function below may be
 * freed with free() or shardalloc_free(), from any thread.
 */
#ifndef SHARDALLOC_H
#define SHARDALLOC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- allocation under shardalloc's own names (same rules as malloc & co) */
void *shardalloc_malloc(size_t size);
void *shardalloc_calloc(size_t count, size_t size);
/* NULL ptr: malloc; size 0: frees and returns NULL; failure: block intact. */
void *shardalloc_realloc(void *ptr, size_t size);
/* align must be a power of two (else NULL, errno = EINVAL). */
void *shardalloc_aligned_alloc(size_t align, size_t size);
void shardalloc_free(void *ptr);
size_t shardalloc_usable_size(const void *ptr);

/* ---- memory return
 * Gives back what can go now: the calling thread's empty pages; with
 * force != 0 also its retired pages, emptied abandoned segments, the
 * segment cache and the waiting empty pages of every other thread. */
void shardalloc_collect(int force);

/* ---- options (also settable at start-up: SHARDALLOC_* environment
 * variables, see the README). Setters returning int return 0 or EINVAL. */
int shardalloc_set_reset_delay_ms(uint64_t ms); /* 0..=60000 */
uint64_t shardalloc_reset_delay_ms(void);
int shardalloc_set_reset_mode(int mode); /* 0: MADV_DONTNEED, 1: MADV_FREE */
int shardalloc_reset_mode(void);
void shardalloc_set_pending_reset_limit(size_t bytes); /* per thread */
size_t shardalloc_pending_reset_limit(void);
int shardalloc_set_segment_cache(size_t segments); /* 0..=16 */
size_t shardalloc_segment_cache(void);
int shardalloc_set_dense_segments(size_t segments); /* 0..=64; 0: every segment on huge pages */
size_t shardalloc_dense_segments(void);
void shardalloc_set_huge_os_pages(int enabled);
int shardalloc_huge_os_pages(void);

/* ---- statistics (no allocation) */
struct shardalloc_stats {
    size_t live;               /* bytes in live blocks */
    size_t committed;          /* block memory that may be resident */
    size_t reserved;           /* address space mapped now */
    size_t reset;              /* bytes given back with madvise so far */
    size_t abandoned_segments; /* segments of exited threads */
    size_t cached_segments;    /* empty segments kept for reuse */
    size_t mmap_calls;
    size_t munmap_calls;
    size_t madvise_calls;
    size_t resident;           /* process RSS in bytes; SIZE_MAX if unknown */
    size_t threads_without_exit_hook;
    size_t heaps;              /* registered heaps */
};
void shardalloc_get_stats(struct shardalloc_stats *out);
void shardalloc_print_stats(void); /* to stderr */

/* ---- first-class heaps
 * A heap belongs to the thread that created it: every shardalloc_heap_*
 * call on a handle must be made on that thread (the Rust type behind it
 * is neither Send nor Sync). Its blocks may be freed from any thread with
 * free() / shardalloc_free() while the heap exists. */
typedef struct shardalloc_heap shardalloc_heap_t;

shardalloc_heap_t *shardalloc_heap_new(void); /* NULL, errno = ENOMEM */
void *shardalloc_heap_malloc(shardalloc_heap_t *heap, size_t size);
void *shardalloc_heap_malloc_aligned(shardalloc_heap_t *heap, size_t size, size_t align);
void *shardalloc_heap_calloc(shardalloc_heap_t *heap, size_t count, size_t size);
/* A block that moves, moves into heap; size 0 frees and returns NULL. */
void *shardalloc_heap_realloc(shardalloc_heap_t *heap, void *ptr, size_t size);
void shardalloc_heap_free(shardalloc_heap_t *heap, void *ptr);
int shardalloc_heap_contains(shardalloc_heap_t *heap, const void *ptr);
/* Releases the heap and every block still in it, at once. Frees of its
 * blocks by other threads must happen before this call. */
void shardalloc_heap_destroy(shardalloc_heap_t *heap);
/* Deletes the heap but keeps its live blocks valid (free them later). */
void shardalloc_heap_delete(shardalloc_heap_t *heap);

#ifdef __cplusplus
}
#endif
#endif /* SHARDALLOC_H */
