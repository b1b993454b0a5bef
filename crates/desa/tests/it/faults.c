/* Fault injection, preloaded into the real desa process (LD_PRELOAD).
 *
 * Counts the calls of the operations named in DESA_FAULT_OPS (a comma list
 * of open, write, fsync, rename, mmap; fdatasync counts as fsync) whose path
 * contains DESA_FAULT_PATH, while the file DESA_FAULT_IF exists. From the
 * DESA_FAULT_NTH-th counted call on (1-based; 0 or unset: never), every
 * counted call fails without being made: a fault that lasts until the
 * trigger file is removed, as a full disk or a failing device does. The
 * errno is the operation's usual one for such a fault: open EMFILE, write
 * ENOSPC, fsync EIO, rename EIO, mmap ENOMEM.
 *
 * Each counted call appends "op path\n" to DESA_FAULT_LOG, if set, so that
 * a test learns how many calls a code path makes and can fail each one.
 *
 * The path of a descriptor is read from /proc/self/fd, so only calls on
 * files under DESA_FAULT_PATH (the data dir) count; sockets and the log do
 * not. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <unistd.h>

static unsigned long counted;

static ssize_t real_write(int fd, const void *buf, size_t n) {
    static ssize_t (*real)(int, const void *, size_t);
    if (real == NULL)
        real = (ssize_t(*)(int, const void *, size_t))dlsym(RTLD_NEXT, "write");
    return real(fd, buf, n);
}

static int op_enabled(const char *op) {
    const char *ops = getenv("DESA_FAULT_OPS");
    if (ops == NULL)
        return 0;
    size_t len = strlen(op);
    for (const char *p = ops; (p = strstr(p, op)) != NULL; p += len) {
        int starts = p == ops || p[-1] == ',';
        int ends = p[len] == '\0' || p[len] == ',';
        if (starts && ends)
            return 1;
    }
    return 0;
}

static int path_matches(const char *path) {
    const char *want = getenv("DESA_FAULT_PATH");
    return want != NULL && path != NULL && strstr(path, want) != NULL;
}

static int fd_matches(int fd) {
    char link[64], path[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n <= 0)
        return 0;
    path[n] = '\0';
    return path_matches(path);
}

static int armed(void) {
    const char *trigger = getenv("DESA_FAULT_IF");
    return trigger != NULL && access(trigger, F_OK) == 0;
}

static void log_call(const char *op, const char *path) {
    const char *log = getenv("DESA_FAULT_LOG");
    if (log == NULL)
        return;
    static ssize_t (*real_open)(const char *, int, ...);
    if (real_open == NULL)
        real_open = (ssize_t(*)(const char *, int, ...))dlsym(RTLD_NEXT, "open64");
    int fd = (int)real_open(log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return;
    char line[4200];
    int n = snprintf(line, sizeof line, "%s %s\n", op, path ? path : "?");
    if (n > 0)
        real_write(fd, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
    close(fd);
}

/* 1 if this call must fail (with errno set), 0 to make it. */
static int fault(const char *op, const char *path, int err) {
    if (!op_enabled(op) || !armed())
        return 0;
    unsigned long n = __atomic_add_fetch(&counted, 1, __ATOMIC_SEQ_CST);
    log_call(op, path);
    const char *nth = getenv("DESA_FAULT_NTH");
    unsigned long from = nth ? strtoul(nth, NULL, 10) : 0;
    if (from == 0 || n < from)
        return 0;
    errno = err;
    return 1;
}

static int fd_fault(const char *op, int fd, int err) {
    if (!op_enabled(op) || !armed() || !fd_matches(fd))
        return 0;
    char link[64], path[4096] = "?";
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n > 0)
        path[n] = '\0';
    return fault(op, path, err);
}

static int open_common(const char *sym, const char *path, int flags, mode_t mode) {
    if (path_matches(path) && fault("open", path, EMFILE))
        return -1;
    int (*real)(const char *, int, ...) = (int (*)(const char *, int, ...))dlsym(RTLD_NEXT, sym);
    return real(path, flags, mode);
}

int open(const char *path, int flags, ...) {
    mode_t mode = 0;
    if (flags & (O_CREAT | O_TMPFILE)) {
        va_list ap;
        va_start(ap, flags);
        mode = va_arg(ap, mode_t);
        va_end(ap);
    }
    return open_common("open", path, flags, mode);
}

int open64(const char *path, int flags, ...) {
    mode_t mode = 0;
    if (flags & (O_CREAT | O_TMPFILE)) {
        va_list ap;
        va_start(ap, flags);
        mode = va_arg(ap, mode_t);
        va_end(ap);
    }
    return open_common("open64", path, flags, mode);
}

ssize_t write(int fd, const void *buf, size_t n) {
    if (fd > 2 && fd_fault("write", fd, ENOSPC))
        return -1;
    return real_write(fd, buf, n);
}

int fsync(int fd) {
    static int (*real)(int);
    if (fd_fault("fsync", fd, EIO))
        return -1;
    if (real == NULL)
        real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (fd_fault("fsync", fd, EIO))
        return -1;
    if (real == NULL)
        real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    return real(fd);
}

int rename(const char *from, const char *to) {
    static int (*real)(const char *, const char *);
    if (path_matches(from) && fault("rename", from, EIO))
        return -1;
    if (real == NULL)
        real = (int (*)(const char *, const char *))dlsym(RTLD_NEXT, "rename");
    return real(from, to);
}

void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
    static void *(*real)(void *, size_t, int, int, int, off_t);
    if (fd >= 0 && fd_fault("mmap", fd, ENOMEM))
        return MAP_FAILED;
    if (real == NULL)
        real = (void *(*)(void *, size_t, int, int, int, off_t))dlsym(RTLD_NEXT, "mmap");
    return real(addr, len, prot, flags, fd, off);
}

void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
    return mmap(addr, len, prot, flags, fd, off);
}
