/* Runs a command and prints, on stderr, what `/usr/bin/time -f "%e %M %U %S"`
 * prints, with more digits: wall seconds, peak RSS in KiB, user and system
 * CPU seconds (all threads, from wait4's rusage, to the microsecond; GNU
 * time truncates each to 10 ms, a tenth of a 0.2 s program). The command's
 * own exit status is returned. Used by benches/c_programs.sh:
 *     cc -O2 -o run benches/c/run.c && ./run prog args...
 * It forks (not vfork: a child sharing our memory would count our RSS as
 * the program's peak) and is small, so the child's RSS before its exec
 * stays below any program's. */
#include <stdio.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double seconds(struct timeval t) { return t.tv_sec + t.tv_usec / 1e6; }

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s command [args...]\n", argv[0]);
        return 2;
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        return 2;
    }
    if (pid == 0) {
        execvp(argv[1], argv + 1);
        perror(argv[1]);
        _exit(127);
    }
    int status;
    struct rusage ru;
    if (wait4(pid, &status, 0, &ru) < 0) {
        perror("wait4");
        return 2;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double wall = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
    fprintf(stderr, "%.3f %ld %.4f %.4f\n", wall, ru.ru_maxrss, seconds(ru.ru_utime),
            seconds(ru.ru_stime));
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}
