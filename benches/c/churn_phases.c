/* Where a short-lived thread's time goes: the thread body of
 * capi/tests/c/cases.c's `churn` (free the block the previous thread left,
 * 32 mallocs of 24-3031 B, 32 frees, one malloc of 200 B handed on), run by
 * 6000 threads one after another, each phase timed with the TSC inside the
 * program. Prints the medians over the threads, in ns:
 *   start  pthread_create called -> thread function entered (clone, glibc's
 *          thread set-up, the scheduler)
 *   body   the thread function's allocator work, split into: the carried
 *          free (a block of the previous thread), the first malloc (the
 *          allocator's thread set-up: a new or adopted heap, arena, tcache),
 *          the other 31 mallocs, the 32 frees
 *   exit   thread function returned -> pthread_join returned (key and TLS
 *          destructors, the allocator's thread teardown, the kernel's exit,
 *          the joiner's wake-up)
 * Build and run (x86-64):
 *     cc -O2 -pthread -o churn_phases benches/c/churn_phases.c
 *     taskset -c 1 ./churn_phases
 *     LD_PRELOAD=$PWD/target/release/libshardalloc.so taskset -c 1 ./churn_phases
 * (one CPU: no migrations, so start and exit measure work, not waits). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <x86intrin.h>

#define THREADS 6000
enum { START, CARRIED_FREE, FIRST_MALLOC, MALLOCS, FREES, BODY, EXIT, PHASES };
static const char *names[PHASES] = {"start", "carried free", "first malloc", "31 mallocs",
                                    "32 frees", "body", "exit"};
static unsigned long long ticks[PHASES][THREADS];
static unsigned long long created, entered, returned;
static int current;

static void *churn_thread(void *arg) {
    unsigned long long t0 = __rdtsc();
    entered = t0;
    free(arg);
    unsigned long long t1 = __rdtsc();
    void *blocks[32];
    blocks[0] = malloc(24);
    unsigned long long t2 = __rdtsc();
    for (int i = 1; i < 32; i++) blocks[i] = malloc(24 + i * 97);
    unsigned long long t3 = __rdtsc();
    for (int i = 0; i < 32; i++) free(blocks[i]);
    unsigned long long t4 = __rdtsc();
    char *next = malloc(200);
    memset(next, 4, 200);
    unsigned long long t5 = __rdtsc();
    ticks[CARRIED_FREE][current] = t1 - t0;
    ticks[FIRST_MALLOC][current] = t2 - t1;
    ticks[MALLOCS][current] = t3 - t2;
    ticks[FREES][current] = t4 - t3;
    ticks[BODY][current] = t5 - t0;
    returned = __rdtsc();
    return next;
}

static int compare(const void *a, const void *b) {
    unsigned long long x = *(const unsigned long long *)a, y = *(const unsigned long long *)b;
    return x < y ? -1 : x > y;
}

int main(void) {
    struct timespec w0, w1;
    clock_gettime(CLOCK_MONOTONIC, &w0);
    unsigned long long c0 = __rdtsc();
    void *carry = malloc(200);
    for (current = 0; current < THREADS; current++) {
        pthread_t t;
        created = __rdtsc();
        if (pthread_create(&t, NULL, churn_thread, carry)) {
            fprintf(stderr, "pthread_create failed\n");
            return 1;
        }
        pthread_join(t, &carry);
        unsigned long long joined = __rdtsc();
        ticks[START][current] = entered - created;
        ticks[EXIT][current] = joined - returned;
    }
    free(carry);
    clock_gettime(CLOCK_MONOTONIC, &w1);
    double ns_per_tick =
        ((w1.tv_sec - w0.tv_sec) * 1e9 + (w1.tv_nsec - w0.tv_nsec)) / (double)(__rdtsc() - c0);
    for (int p = 0; p < PHASES; p++) {
        qsort(ticks[p], THREADS, sizeof ticks[p][0], compare);
        printf("%s %.0f%s", names[p], ticks[p][THREADS / 2] * ns_per_tick,
               p + 1 < PHASES ? " | " : " (medians, ns)\n");
    }
    return 0;
}
