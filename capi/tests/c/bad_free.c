/* The guard's positive control: an allocator layer that does what the
 * allocator must not, calling malloc from inside free. Preloaded between
 * guard.so and libshardalloc.so, the guard must count nested calls. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>
#include <stdlib.h>

typedef void (*free_fn)(void *);
static free_fn next_free;

__attribute__((constructor(102))) static void resolve(void) {
    next_free = (free_fn)dlsym(RTLD_NEXT, "free");
}

void free(void *p) {
    if (!next_free) resolve();
    void *scratch = malloc(16); /* the forbidden call: lands in guard.so */
    next_free(scratch);
    next_free(p);
}
