/* mkfiles DIR N: create DIR/dK/fI (100 per directory) with 4 KiB each: open, write, close.
 * Prints the seconds it took. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: mkfiles DIR N\n"); return 2; }
    int n = atoi(argv[2]);
    char buf[4096], p[4096];
    for (int i = 0; i < 4096; i++) buf[i] = (char)(i * 7);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int i = 0; i < n; i++) {
        if (i % 100 == 0) {
            snprintf(p, sizeof p, "%s/d%d", argv[1], i / 100);
            if (mkdir(p, 0755) && access(p, F_OK)) { perror(p); return 1; }
        }
        snprintf(p, sizeof p, "%s/d%d/f%d", argv[1], i / 100, i);
        int fd = open(p, O_CREAT | O_WRONLY | O_TRUNC, 0644);
        if (fd < 0 || write(fd, buf, sizeof buf) != sizeof buf || close(fd)) { perror(p); return 1; }
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%.6f\n", (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9);
    return 0;
}
