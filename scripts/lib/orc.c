/* orc ROUNDS < paths: open, read whole, close every path named on stdin, ROUNDS times.
 * Prints the seconds it took. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 1;
    static char paths[100000][256];
    int n = 0;
    while (n < 100000 && fgets(paths[n], sizeof paths[n], stdin)) {
        paths[n][strcspn(paths[n], "\n")] = 0;
        n++;
    }
    char buf[65536];
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int r = 0; r < rounds; r++)
        for (int i = 0; i < n; i++) {
            int fd = open(paths[i], O_RDONLY);
            if (fd < 0) { perror(paths[i]); return 1; }
            while (read(fd, buf, sizeof buf) > 0) {}
            close(fd);
        }
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%.6f\n", (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9);
    return 0;
}
