/* Fault injection for the fsync-failure test: preloaded into the real desa
 * process, it makes fsync and fdatasync fail with EIO while the file named by
 * DESA_TEST_FAIL_SYNC_IF exists, and calls the real ones otherwise. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

static int armed(void) {
    const char *trigger = getenv("DESA_TEST_FAIL_SYNC_IF");
    return trigger != NULL && access(trigger, F_OK) == 0;
}

int fsync(int fd) {
    static int (*real)(int);
    if (armed()) {
        errno = EIO;
        return -1;
    }
    if (real == NULL)
        real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (armed()) {
        errno = EIO;
        return -1;
    }
    if (real == NULL)
        real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    return real(fd);
}
