/* A shared library whose constructor and destructor allocate: under
 * LD_PRELOAD they run before and after main, possibly before anything else
 * has called malloc in the process. */
#include <stdlib.h>
#include <string.h>

static char *kept;

__attribute__((constructor)) static void lib_init(void) {
    kept = malloc(100);
    strcpy(kept, "constructed");
    void *volatile tmp = calloc(1000, 10);
    free(tmp);
}

__attribute__((destructor)) static void lib_fini(void) {
    kept = realloc(kept, 5000);
    free(kept);
    void *volatile sink = malloc(64);
    free(sink);
}

const char *ctor_lib_message(void) { return kept; }
