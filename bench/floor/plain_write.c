/*
 * plain_write.c - the floor under the journal: a plain sequential write of the same bytes.
 *
 * bench/journal_throughput.py runs this beside pyseq's journaler with the journaler's own figures:
 * the same total bytes, written to a new file on the same file system in chunks of the journaler's
 * average write, with the matching fdatasync:
 *
 *   never           pwrite only (the data reaches the page cache, as with fsync=never)
 *   batch           pwrite, fdatasync, pwrite, fdatasync, ...        (fsync=batch)
 *   interval:NS     pwrite ...; after a pwrite, fdatasync if NS nanoseconds passed since the last
 *                   one, and once at the end                          (fsync=interval:MS)
 *
 * No encoding, no checksum, no ring: what the journal costs beyond this is its own.  The time runs
 * from before the first pwrite to after the last pwrite (never) or the last fdatasync (the others):
 * the moment the journal would publish journaled_sequence for the last byte.
 *
 * Usage:  plain_write PATH TOTAL_BYTES CHUNK_BYTES MODE
 * Output: key=value lines (seconds, bytes, writes, syncs, sync_max_ns); check=ok last.  The file is
 * left for the caller to remove.  Exit status 0 ok, 1 an I/O error, 64 bad usage.
 *
 * Standalone: the bench compiles it with gcc -O2 into a temporary directory at run time.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int usage(void)
{
    fprintf(stderr, "usage: plain_write PATH TOTAL_BYTES CHUNK_BYTES never|batch|interval:NS\n");
    return 64;
}

int main(int argc, char **argv)
{
    if (argc != 5)
        return usage();
    const char *path = argv[1];
    long long total = atoll(argv[2]);
    long long chunk = atoll(argv[3]);
    const char *mode = argv[4];
    int never = strcmp(mode, "never") == 0, batch = strcmp(mode, "batch") == 0;
    long long interval_ns = 0;
    if (strncmp(mode, "interval:", 9) == 0)
        interval_ns = atoll(mode + 9);
    if (total <= 0 || chunk <= 0 || (!never && !batch && interval_ns <= 0))
        return usage();

    uint8_t *buf = malloc((size_t)chunk);
    if (buf == NULL) {
        perror("malloc");
        return 1;
    }
    for (long long i = 0; i < chunk; i++)
        buf[i] = (uint8_t)(0x40 + i % 61); /* not zeros: nothing below may shortcut them */
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        perror(path);
        return 1;
    }

    long long offset = 0, writes = 0, syncs = 0;
    int64_t sync_max = 0;
    int unsynced = 0;
    int64_t start = now_ns();
    int64_t last_sync = start;
    while (offset < total) {
        long long n = total - offset < chunk ? total - offset : chunk;
        const uint8_t *p = buf;
        long long left = n;
        while (left > 0) {
            ssize_t w = pwrite(fd, p, (size_t)left, (off_t)offset);
            if (w < 0) {
                if (errno == EINTR)
                    continue;
                perror("pwrite");
                return 1;
            }
            p += w;
            left -= w;
            offset += w;
        }
        writes++;
        unsynced = 1;
        int64_t t = now_ns();
        if (batch || (interval_ns > 0 && t - last_sync >= interval_ns)) {
            if (fdatasync(fd) != 0) {
                perror("fdatasync");
                return 1;
            }
            last_sync = now_ns();
            if (last_sync - t > sync_max)
                sync_max = last_sync - t;
            syncs++;
            unsynced = 0;
        }
    }
    if (!never && unsynced) {
        int64_t t = now_ns();
        if (fdatasync(fd) != 0) {
            perror("fdatasync");
            return 1;
        }
        if (now_ns() - t > sync_max)
            sync_max = now_ns() - t;
        syncs++;
    }
    int64_t end = now_ns();
    close(fd);
    free(buf);
    printf("seconds=%.9f\nbytes=%lld\nwrites=%lld\nsyncs=%lld\nsync_max_ns=%lld\ncheck=ok\n",
           (double)(end - start) / 1e9, offset, writes, syncs, (long long)sync_max);
    return 0;
}
