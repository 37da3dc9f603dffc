/* The process's first allocation comes from inside glibc's pthread_atfork:
 * a constructor registers 200 handlers before anything has allocated, so
 * glibc grows its handler list with malloc while it holds its atfork lock.
 * The allocator's start-up must not call pthread_atfork from there (it
 * would wait for that lock forever). Then fork runs every handler.
 * Prints "prepared 200 status 0". */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
static int prepared;
static void prepare(void) { prepared++; }
/* Before any malloc of the program: priority 101 runs first. */
__attribute__((constructor(101))) static void fill(void) {
    for (int i = 0; i < 200; i++) pthread_atfork(prepare, NULL, NULL);
}
int main(void) {
    char *p = malloc(100);
    strcpy(p, "x");
    pid_t pid = fork();
    if (pid == 0) { free(malloc(10)); _exit(0); }
    int st; waitpid(pid, &st, 0);
    printf("prepared %d status %d\n", prepared, st);
    free(p);
    return 0;
}
