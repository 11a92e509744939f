/* escape-probe: tries one thing a contained process must not be able to do and prints
 * "WHAT: allowed" or "WHAT: denied (REASON)". Built static by the escape tests
 * (tests/tests/sandbox_escapes.rs) and copied into a test image. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <netinet/in.h>
#include <unistd.h>
#include <fcntl.h>
#include <sched.h>
static void report(const char *what, int r) {
    if (r < 0) printf("%s: denied (%s)\n", what, strerror(errno));
    else printf("%s: allowed\n", what);
}
int main(int argc, char **argv) {
    if (argc < 2) return 2;
    const char *t = argv[1];
    if (!strcmp(t, "mount")) report("mount", mount("none", "/mnt", "tmpfs", 0, NULL));
    else if (!strcmp(t, "mknod")) report("mknod", mknod("/tmp/sda", S_IFBLK | 0600, makedev(8, 0)));
    else if (!strcmp(t, "raw")) report("raw socket", socket(AF_INET, SOCK_RAW, IPPROTO_ICMP));
    else if (!strcmp(t, "module")) { int fd = open("/dev/null", O_RDONLY); report("finit_module", syscall(SYS_finit_module, fd, "", 0)); }
    else if (!strcmp(t, "ptrace")) report("ptrace", ptrace(PTRACE_ATTACH, atoi(argv[2]), 0, 0));
    else if (!strcmp(t, "kill")) report("kill", kill(atoi(argv[2]), 0));
    else if (!strcmp(t, "unshare")) report("unshare", unshare(CLONE_NEWUSER));
    else if (!strcmp(t, "read")) report("read", open(argv[2], O_RDONLY));
    else return 2;
    return 0;
}
