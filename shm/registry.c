/*
 * The registry segment's life cycle: size it, create or take over the POSIX
 * shared-memory object, map it (read-write for the group, read-only for the
 * dump tool), and check a segment's header before trusting anything in it.
 * The slot operations are in registry_slot.c, dead-writer repair in
 * registry_repair.c; the protocol they all follow is in registry.h.
 */
#include "shm/registry_impl.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* ---- sizes (overflow-checked, PostgreSQL add_size/mul_size style) ---- */

static int add_size(size_t *acc, size_t n)
{
    if (*acc > SIZE_MAX - n)
        return -EOVERFLOW;
    *acc += n;
    return 0;
}

static int mul_size(size_t a, size_t b, size_t *out)
{
    if (a != 0 && b > SIZE_MAX / a)
        return -EOVERFLOW;
    *out = a * b;
    return 0;
}

static size_t align64(size_t n)
{
    return (n + 63) & ~(size_t)63;
}

static uint32_t pow2_at_least(uint64_t n)
{
    uint64_t p = 1;
    while (p < n)
        p <<= 1;
    return p > UINT32_MAX ? 0 : (uint32_t)p;
}

/* Append a part of n elements of size each, aligned to align (64 or 128); its offset or 0. */
static uint64_t add_part(size_t *total, size_t n, size_t each, size_t align)
{
    size_t bytes, off = align64(*total);
    if (off % align)
        off += 64;
    if (mul_size(n, each, &bytes) || off < *total)
        return 0;
    *total = off;
    if (add_size(total, align64(bytes)))
        return 0;
    return off;
}

size_t th_reg_layout(uint32_t nslots, struct th_reg_hdr *out)
{
    struct th_reg_hdr h = {0};
    if (nslots == 0 || nslots > TH_REG_MAX_SLOTS)
        return 0;
    h.magic = TH_REG_MAGIC;
    h.version = TH_REG_VERSION;
    h.slot_size = sizeof(struct th_slot);
    h.nslots = nslots;
    /* At least two lines. 4 words a slot: a user's first line then stays below
     * TH_REG_FIRST_ROOM free buckets for 1% of users at 1M slots (2x: 20%). */
    h.nbuckets = pow2_at_least(nslots < 8 ? 32 : TH_REG_INDEX_FACTOR * (uint64_t)nslots);
    /* One disconnect record per 16 slots: a hint table, not an archive. */
    h.ndisc = pow2_at_least(nslots / 16 < 1024 ? 1024 : nslots / 16);
    size_t total = sizeof(struct th_reg_hdr);
    /* Index groups start on 128 bytes, so none straddles a page (one TLB entry a group). */
    h.off_index = add_part(&total, h.nbuckets, sizeof(uint64_t), TH_REG_LINE_BYTES);
    h.off_freemap = add_part(&total, (nslots + 63) / 64, sizeof(uint64_t), 64);
    h.off_disc = add_part(&total, h.ndisc, sizeof(struct th_disc), 64);
    h.off_slots = add_part(&total, nslots, sizeof(struct th_slot), 64);
    if (!h.nbuckets || !h.off_index || !h.off_freemap || !h.off_disc || !h.off_slots)
        return 0;
    h.total_size = total;
    if (out)
        *out = h;
    return total;
}

/* ---- process identity ---- */

static _Atomic pid_t self_pid;
static pthread_once_t self_once = PTHREAD_ONCE_INIT;

static void self_forget(void)
{
    atomic_store_explicit(&self_pid, 0, memory_order_relaxed);
}

static void self_register(void)
{
    pthread_atfork(NULL, NULL, self_forget);
}

pid_t th_reg_self(void)
{
    pid_t p = atomic_load_explicit(&self_pid, memory_order_relaxed);
    if (p)
        return p;
    pthread_once(&self_once, self_register);
    p = getpid();
    atomic_store_explicit(&self_pid, p, memory_order_relaxed);
    return p;
}

/* include/linux/sched.h: set at the start of do_exit, before the files (sockets) close. */
#define PROC_PF_EXITING 0x00000004ul

uint64_t th_proc_stat(pid_t pid, char *state)
{
    char path[64], buf[1024];
    *state = 0;
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = 0;
    char *p = strrchr(buf, ')'); /* the command name may contain spaces and ')' */
    if (!p || !p[1] || !p[2])
        return 0;
    *state = p[2];
    unsigned long flags = 0;
    for (int field = 2; *p && field < 22; p++) /* p sits on field 2's end */
        if (*p == ' ' && ++field == 9)
            flags = strtoul(p + 1, NULL, 10);
    if (*state != 'Z' && (flags & PROC_PF_EXITING))
        *state = 'X'; /* exiting: see th_proc_stat in registry.h */
    return strtoull(p, NULL, 10);
}

uint64_t th_proc_start_time(pid_t pid)
{
    char state;
    return th_proc_stat(pid, &state);
}

/*
 * A zombie (killed, not yet reaped by its parent) still answers kill(pid, 0)
 * and keeps its start time, but will never write again: it counts as dead,
 * and so does a process still exiting (th_proc_stat says 'X').
 * That matters in the window between a kill -9 and the supervisor's
 * waitpid: a JetStream cache whose writer is a zombie is stale, and a resume
 * must not be answered from it as if it were mirrored (cluster_jetstream);
 * a zombie worker's slots are orphans the janitor may release, and /healthz
 * must not count a killed role as up. *start gets the start time (0 when
 * /proc cannot tell, which counts as alive).
 */
static int pid_alive_start(pid_t pid, uint64_t *start)
{
    *start = 0;
    if (pid <= 0 || (kill(pid, 0) != 0 && errno != EPERM))
        return 0;
    char state;
    *start = th_proc_stat(pid, &state);
    return state != 'Z' && state != 'X';
}

int th_pid_alive(pid_t pid)
{
    uint64_t start;
    return pid_alive_start(pid, &start);
}

int th_pid_alive_since(pid_t pid, uint64_t start)
{
    uint64_t now_start;
    if (!pid_alive_start(pid, &now_start))
        return 0;
    return now_start == 0 || start == 0 || now_start == start; /* unknown: assume alive */
}

/* ---- small shared helpers ---- */

uint32_t th_user_hash(const char *user, size_t ulen)
{
    uint32_t h = 2166136261u; /* FNV-1a, then murmur3's fmix32 so the low bits mix too */
    for (size_t i = 0; i < ulen; i++)
        h = (h ^ (unsigned char)user[i]) * 16777619u;
    h ^= h >> 16;
    h *= 0x85ebca6bu;
    h ^= h >> 13;
    h *= 0xc2b2ae35u;
    h ^= h >> 16;
    return h;
}

void th_user_load(char dst[TH_USER_MAX], const char *src)
{
    const uint64_t *w = (const uint64_t *)(const void *)src;
    for (int i = 0; i < TH_USER_MAX / 8; i++) {
        uint64_t v = __atomic_load_n(&w[i], __ATOMIC_ACQUIRE);
        memcpy(dst + 8 * i, &v, 8);
    }
}

void th_user_store(char *dst, const char *user, size_t ulen)
{
    char buf[TH_USER_MAX] = {0};
    memcpy(buf, user, ulen);
    uint64_t *w = (uint64_t *)(void *)dst;
    for (int i = 0; i < TH_USER_MAX / 8; i++) {
        uint64_t v;
        memcpy(&v, buf + 8 * i, 8);
        __atomic_store_n(&w[i], v, __ATOMIC_RELEASE);
    }
}

void th_reg_counter_dec(_Atomic uint32_t *ctr)
{
    uint32_t v = atomic_load_explicit(ctr, memory_order_relaxed);
    while (v > 0 && !atomic_compare_exchange_weak(ctr, &v, v - 1))
        ;
}

void th_reg_counts_dec(_Atomic uint64_t *counts, uint64_t one)
{
    uint64_t v = atomic_load_explicit(counts, memory_order_relaxed);
    /* Saturating per half: a half at 0 stays 0 and never borrows from the other. */
    while ((one == 1 ? th_reg_count_spill(v) : th_reg_count_back(v)) > 0 &&
           !atomic_compare_exchange_weak(counts, &v, v - one))
        ;
}

const char *th_slot_state_name(unsigned state)
{
    static const char *names[] = {"free", "claiming", "live", "releasing"};
    return state < 4 ? names[state] : "invalid";
}

/* ---- mapping ---- */

/*
 * Ask for transparent huge pages on the mapping (best effort, before the
 * creator first touches it): a lookup at 1M slots then misses the TLB far
 * less (the segment is ~141 MiB). tmpfs honours it only when /dev/shm is
 * mounted with huge=advise (or huge=always); with Debian's default
 * (huge=never) it changes nothing.
 */
static void want_huge_pages(void *base, size_t size)
{
    (void)madvise(base, size, MADV_HUGEPAGE);
}

static void reg_bind(struct th_reg *r, void *base, size_t size, int writable)
{
    memset(r, 0, sizeof(*r));
    r->base = base;
    r->size = size;
    r->writable = writable;
    r->hdr = base;
    r->index = (_Atomic uint64_t *)((char *)base + r->hdr->off_index);
    r->freemap = (_Atomic uint64_t *)((char *)base + r->hdr->off_freemap);
    r->disc = (struct th_disc *)((char *)base + r->hdr->off_disc);
    r->slots = (struct th_slot *)((char *)base + r->hdr->off_slots);
}

/* Check a header copy against its file size; 0 or -errno with a message. */
static int hdr_check(const struct th_reg_hdr *h, off_t fsize, const char *name, char *err,
                     size_t errlen)
{
    struct th_reg_hdr want;
    if (h->magic != TH_REG_MAGIC) {
        set_err(err, errlen, "%s is not a tether registry segment (bad magic)", name);
        return -EPROTO;
    }
    if (h->version != TH_REG_VERSION) {
        set_err(err, errlen, "%s has registry layout version %u, this build reads version %u", name,
                h->version, TH_REG_VERSION);
        return -EPROTO;
    }
    if (h->slot_size != sizeof(struct th_slot)) {
        set_err(err, errlen, "%s has %u-byte slots, this build uses %zu", name, h->slot_size,
                sizeof(struct th_slot));
        return -EPROTO;
    }
    if (h->total_size != (uint64_t)fsize || th_reg_layout(h->nslots, &want) != h->total_size ||
        want.nbuckets != h->nbuckets || want.ndisc != h->ndisc || want.off_slots != h->off_slots ||
        want.off_disc != h->off_disc || want.off_index != h->off_index ||
        want.off_freemap != h->off_freemap) {
        set_err(err, errlen,
                "%s: header says %llu bytes for %u slots but the segment is %lld bytes "
                "(truncated or corrupt)",
                name, (unsigned long long)h->total_size, h->nslots, (long long)fsize);
        return -EINVAL;
    }
    return 0;
}

/* Read the header through the fd (nothing mapped yet) and check it. */
static int read_checked_hdr(int fd, const char *name, struct th_reg_hdr *h, char *err,
                            size_t errlen)
{
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int e = errno;
        set_err(err, errlen, "fstat %s: %s", name, strerror(e));
        return -e;
    }
    if ((size_t)st.st_size < sizeof(*h)) {
        set_err(err, errlen, "%s is %lld bytes: too small to be a tether registry segment", name,
                (long long)st.st_size);
        return -EPROTO;
    }
    if (pread(fd, h, sizeof(*h), 0) != (ssize_t)sizeof(*h)) {
        set_err(err, errlen, "read header of %s: %s", name, strerror(errno));
        return -EIO;
    }
    return hdr_check(h, st.st_size, name, err, errlen);
}

int th_reg_attach(struct th_reg *r, const char *name, int writable, char *err, size_t errlen)
{
    struct th_reg_hdr h;
    memset(r, 0, sizeof(*r));
    th_reg_self();
    int fd = shm_open(name, (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC, 0);
    if (fd < 0) {
        int e = errno;
        set_err(err, errlen, "cannot open registry segment %s: %s", name, strerror(e));
        return -e;
    }
    int rc = read_checked_hdr(fd, name, &h, err, errlen);
    if (rc == 0) {
        void *base = mmap(NULL, h.total_size, writable ? PROT_READ | PROT_WRITE : PROT_READ,
                          MAP_SHARED, fd, 0);
        if (base == MAP_FAILED) {
            rc = -errno;
            set_err(err, errlen, "mmap %s (%llu bytes): %s", name, (unsigned long long)h.total_size,
                    strerror(-rc));
        } else {
            want_huge_pages(base, h.total_size);
            reg_bind(r, base, h.total_size, writable);
        }
    }
    close(fd);
    return rc;
}

void th_reg_detach(struct th_reg *r)
{
    if (r->base)
        munmap(r->base, r->size);
    memset(r, 0, sizeof(*r));
}

int th_reg_unlink(const char *name)
{
    return shm_unlink(name) == 0 ? 0 : -errno;
}

/* ---- creation and take-over ---- */

/*
 * May we (re)initialise what is in fd? 0 if empty or left by a dead group;
 * -EBUSY if its creator lives; -EEXIST/-EPROTO for something that is not ours.
 */
static int may_take_over(int fd, const char *name, char *err, size_t errlen)
{
    struct stat st;
    struct th_reg_hdr h;
    if (fstat(fd, &st) < 0)
        return -errno;
    if (st.st_size == 0)
        return 0; /* new, or its creator died before sizing it */
    if ((size_t)st.st_size < sizeof(h) || pread(fd, &h, sizeof(h), 0) != (ssize_t)sizeof(h) ||
        (h.magic != TH_REG_MAGIC && h.magic != 0)) {
        set_err(err, errlen,
                "%s exists and is not a tether registry segment; remove /dev/shm%s "
                "if it is unused",
                name, name);
        return -EEXIST;
    }
    if (h.magic == TH_REG_MAGIC && h.version != TH_REG_VERSION) {
        set_err(err, errlen,
                "%s holds registry layout version %u (this build: %u); stop the "
                "group using it or remove /dev/shm%s",
                name, h.version, TH_REG_VERSION, name);
        return -EPROTO;
    }
    /* magic 0: a creator died mid-initialisation (magic is written last) or still runs */
    int32_t pid = atomic_load(&h.creator_pid);
    if (pid > 0 && th_pid_alive_since(pid, h.creator_start)) {
        set_err(err, errlen,
                "registry segment %s is held by a live tether group (supervisor "
                "pid %d)",
                name, (int)pid);
        return -EBUSY;
    }
    return 0;
}

static void hdr_init(struct th_reg_hdr *h, const struct th_reg_hdr *tmpl)
{
    uint64_t epoch = 0;
    while (epoch == 0)
        if (getrandom(&epoch, sizeof(epoch), 0) != (ssize_t)sizeof(epoch))
            epoch = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    h->version = tmpl->version;
    h->slot_size = tmpl->slot_size;
    h->total_size = tmpl->total_size;
    h->nslots = tmpl->nslots;
    h->nbuckets = tmpl->nbuckets;
    h->ndisc = tmpl->ndisc;
    h->off_index = tmpl->off_index;
    h->off_freemap = tmpl->off_freemap;
    h->off_disc = tmpl->off_disc;
    h->off_slots = tmpl->off_slots;
    h->creator_start = th_proc_start_time(getpid());
    atomic_store(&h->creator_pid, getpid());
    h->boot_epoch = epoch;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    h->created_ns = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* The segment is zero-filled: every slot is FREE with generation 0; mark all free. */
static void body_init(struct th_reg *r)
{
    uint32_t n = r->hdr->nslots, words = (n + 63) / 64;
    for (uint32_t w = 0; w < words; w++) {
        uint32_t bits = n - w * 64 >= 64 ? 64 : n - w * 64;
        atomic_store_explicit(&r->freemap[w], bits == 64 ? ~0ull : (1ull << bits) - 1,
                              memory_order_relaxed);
    }
    for (uint32_t i = 0; i < n; i++)
        atomic_store_explicit(&r->slots[i].bucket, TH_NO_SLOT, memory_order_relaxed);
}

/* Size (zeroing any old content), map and initialise fd. */
static int init_segment(struct th_reg *r, int fd, const struct th_reg_hdr *tmpl, const char *name,
                        char *err, size_t errlen)
{
    if (ftruncate(fd, 0) < 0 || ftruncate(fd, (off_t)tmpl->total_size) < 0) {
        int e = errno;
        set_err(err, errlen, "size registry segment %s to %llu bytes: %s", name,
                (unsigned long long)tmpl->total_size, strerror(e));
        return -e;
    }
    void *base = mmap(NULL, tmpl->total_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        int e = errno;
        set_err(err, errlen, "mmap %s: %s", name, strerror(e));
        return -e;
    }
    want_huge_pages(base, tmpl->total_size);
    struct th_reg_hdr *h = base;
    hdr_init(h, tmpl);
    reg_bind(r, base, tmpl->total_size, 1);
    body_init(r);
    /* Written last, with release order: an attacher that sees the magic sees the rest. */
    __atomic_store_n(&h->magic, TH_REG_MAGIC, __ATOMIC_RELEASE);
    return 0;
}

/*
 * Open name (creating it empty if missing) and lock it. Returns the fd, or
 * -EAGAIN if the name stopped naming this object while we waited for the lock
 * (another creator replaced it: start over), or -errno.
 */
static int open_locked(const char *name, int excl)
{
    struct stat a, b;
    int fd = shm_open(name, O_RDWR | O_CREAT | O_CLOEXEC | (excl ? O_EXCL : 0), 0600);
    if (fd < 0)
        return errno == EEXIST ? -EAGAIN : -errno;
    if (flock(fd, LOCK_EX) < 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    int again = shm_open(name, O_RDONLY | O_CLOEXEC, 0);
    int same = again >= 0 && fstat(fd, &a) == 0 && fstat(again, &b) == 0 && a.st_ino == b.st_ino &&
               a.st_dev == b.st_dev;
    if (again >= 0)
        close(again);
    if (!same) {
        close(fd);
        return -EAGAIN;
    }
    return fd;
}

/*
 * A dead group's segment is not re-used in place: it is unlinked and a new
 * object created, so a process of the old group still running (a worker
 * draining after its supervisor was killed) keeps writing into the old one.
 */
static int replace_locked(const char *name, int fd)
{
    struct stat st;
    if (fstat(fd, &st) < 0)
        return -errno;
    if (st.st_size == 0)
        return fd; /* new, or its creator died before sizing it: use it */
    shm_unlink(name);
    flock(fd, LOCK_UN);
    close(fd);
    return open_locked(name, 1);
}

/* Open, lock and vet the object for a new group; fd or -errno (message in err). */
static int claim_object(const char *name, char *err, size_t errlen)
{
    for (int attempt = 0; attempt < 8; attempt++) {
        int fd = open_locked(name, 0);
        if (fd == -EAGAIN)
            continue;
        if (fd < 0)
            return fd;
        int rc = may_take_over(fd, name, err, errlen);
        if (rc == 0)
            rc = replace_locked(name, fd);
        else
            close(fd);
        if (rc != -EAGAIN)
            return rc;
    }
    set_err(err, errlen, "registry segment %s keeps being replaced by another process", name);
    return -EBUSY;
}

int th_reg_create(struct th_reg *r, const char *name, uint32_t nslots, char *err, size_t errlen)
{
    struct th_reg_hdr tmpl;
    memset(r, 0, sizeof(*r));
    th_reg_self();
    if (th_reg_layout(nslots, &tmpl) == 0) {
        set_err(err, errlen, "registry: %u slots is not a usable size (1 to %u)", nslots,
                TH_REG_MAX_SLOTS);
        return -EINVAL;
    }
    set_err(err, errlen, "registry segment %s", name);
    /* Two supervisors starting at once: the second waits for the lock, then sees the first alive.
     */
    int fd = claim_object(name, err, errlen);
    if (fd < 0) {
        if (fd != -EBUSY && fd != -EEXIST && fd != -EPROTO)
            set_err(err, errlen, "cannot create registry segment %s: %s", name, strerror(-fd));
        return fd;
    }
    int rc = init_segment(r, fd, &tmpl, name, err, errlen);
    flock(fd, LOCK_UN); /* explicit: the mapping keeps the open file (and a lock) alive */
    close(fd);
    return rc;
}
